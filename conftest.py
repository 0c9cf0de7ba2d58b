"""Project-wide pytest configuration: markers, device selection, hypothesis profiles.

- ``--device {auto,cpu,cuda}`` picks where ``gpu``-marked work runs (``auto``: CUDA when
  present, otherwise CPU). The chosen device is printed in the session header.
- ``--require-cuda`` turns a missing CUDA device into a failure of every test that asks for
  the ``device`` fixture (for GPU runners that must not silently fall back to CPU).
- Hypothesis profiles: ``ci`` (derandomized, no example database, no deadline) is loaded
  automatically when the ``CI`` environment variable is set; ``dev`` explores more examples.
  Choose explicitly with ``--hypothesis-profile=NAME``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("default", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# The persistent core cache (docs/math.md §4.6) of a test session is a temporary folder, not the
# user's (set SVFCHECK_CORE_CACHE to choose one); removed at the end of the session.
_CORE_CACHE = None
if "SVFCHECK_CORE_CACHE" not in os.environ:
    import tempfile

    _CORE_CACHE = os.environ["SVFCHECK_CORE_CACHE"] = tempfile.mkdtemp(prefix="svfcheck-test-cores-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CORE_CACHE is not None:
        import shutil

        shutil.rmtree(_CORE_CACHE, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svfcheck")
    group.addoption(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="device for gpu-marked tests: auto (cuda when present, else cpu), cpu or cuda",
    )
    group.addoption(
        "--record-goldens",
        action="store_true",
        default=False,
        help="write the golden results of the selected golden tests to tests/goldens/ instead of comparing (tests/_goldens.py)",
    )
    group.addoption(
        "--require-cuda",
        action="store_true",
        default=False,
        help="fail tests that use the `device` fixture when no CUDA device is available",
    )


def _resolve_device(config: pytest.Config) -> tuple[str, str | None]:
    """Return (device, problem). problem is a message when the request cannot be met."""
    import torch

    want = config.getoption("--device")
    has_cuda = torch.cuda.is_available()
    if want == "auto":
        device = "cuda" if has_cuda else "cpu"
    else:
        device = want
    problem = None
    if device == "cuda" and not has_cuda:
        problem = "--device cuda was requested but torch.cuda.is_available() is False"
    elif config.getoption("--require-cuda") and device != "cuda":
        problem = (
            "--require-cuda was given but no CUDA device is available "
            f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); "
            "run without --require-cuda to use the CPU"
        )
    return device, problem


def pytest_report_header(config: pytest.Config) -> list[str]:
    device, problem = _resolve_device(config)
    from hypothesis import settings as hsettings

    lines = [
        f"svfcheck: gpu-marked tests run on {device}"
        + ("" if device == "cuda" else " (no CUDA device; CPU fallback)"),
        f"svfcheck: hypothesis profile {hsettings._current_profile!r}",
    ]
    if problem:
        lines.append(f"svfcheck: ERROR {problem}")
    return lines


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """The torch device string heavy tests run on; fails under --require-cuda without CUDA."""
    dev, problem = _resolve_device(pytestconfig)
    if problem:
        pytest.fail(problem, pytrace=False)
    return dev


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # In CI the benchmarks run once each, untimed (they must not rot; timings there mean
    # nothing). `--benchmark-enable` overrides this for a real measurement run.
    if os.environ.get("CI") and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True
