"""pytest plugin: run analysis specs as tests (``pytest --svf-spec analyses/ --junitxml out.xml``).

Registered through the ``pytest11`` entry point, so it is loaded in every pytest run of an
environment where svfcheck is installed: it imports only the standard library, pytest and
the spec parser at import time (torch loads when the first spec item runs) and does nothing
unless ``--svf-spec`` is given.

With ``--svf-spec PATH`` (a spec file or a directory of ``*.toml``; repeatable):

- when no test paths are given on the command line, only the specs are collected (not the
  project's ``testpaths``); with explicit paths, the specs are collected in addition;
- each spec file is a collector with one item per ``[[condition]]``, id
  ``<spec file>::<condition name>``, marked ``svf_spec`` (select with ``-m svf_spec``);
- a spec is evaluated once per session (model and baseline analysed once, shared by its
  items); a failing condition reports the measured figure, the threshold and the detail;
- a spec that does not parse or validate is a collection error naming the file, key and
  expected form; an error found at evaluation (e.g. a bound above d_h) fails every item of
  that spec with the message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .spec import Spec, SpecError, load_spec, spec_files

_KEY = "_svfcheck_gate"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svfcheck-gate", "svfcheck analysis specs")
    group.addoption(
        "--svf-spec",
        action="append",
        default=[],
        metavar="PATH",
        help="run the svfcheck analysis spec(s) at PATH (a .toml file or a directory of them) as tests; repeatable",
    )
    group.addoption("--svf-spec-progress", action="store_true", default=False,
                    help="show model-loading/analysis progress bars while evaluating specs")


class _State:
    """Per-session: the spec files asked for and the evaluation cache."""

    def __init__(self, files: list[Path], progress: bool):
        self.files = {f.resolve() for f in files}
        self.progress = progress
        self._evaluator = None
        self.results: dict[Path, object] = {}  # SpecResult or SpecError

    def evaluate(self, spec: Spec):
        key = spec.path.resolve()
        if key not in self.results:
            from .evaluate import Evaluator

            if self._evaluator is None:
                self._evaluator = Evaluator(progress=self.progress)
            try:
                self.results[key] = self._evaluator.evaluate(spec)
            except SpecError as e:
                self.results[key] = e
        return self.results[key]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "svf_spec: a condition of an svfcheck analysis spec (--svf-spec)")
    paths = config.getoption("--svf-spec", default=None)
    if not paths:
        return
    try:
        files = spec_files(paths)
    except SpecError as e:
        raise pytest.UsageError(f"--svf-spec: {e}") from None
    setattr(config, _KEY, _State(files, config.getoption("--svf-spec-progress")))
    spec_args = [str(f) for f in files]
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = spec_args  # only the specs, not the project's testpaths
    else:
        config.args.extend(a for a in spec_args if a not in config.args)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    state = getattr(parent.config, _KEY, None)
    if state is None or file_path.suffix != ".toml" or file_path.resolve() not in state.files:
        return None
    return SpecFile.from_parent(parent, path=file_path)


class SpecFile(pytest.File):
    """One spec file: parsed at collection, one :class:`ConditionItem` per condition."""

    def collect(self):
        spec = load_spec(self.path)  # SpecError -> collection error (see repr_failure)
        for c in spec.conditions:
            yield ConditionItem.from_parent(self, name=c.name, spec=spec, condition=c.name)

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(SpecError):
            return f"spec error: {excinfo.value}"
        return super().repr_failure(excinfo, style)


class ConditionFailed(AssertionError):
    """A condition's measured figure did not meet its threshold."""


class ConditionItem(pytest.Item):
    """One condition of one spec."""

    def __init__(self, *, spec: Spec, condition: str, **kw):
        super().__init__(**kw)
        self.spec = spec
        self.condition = condition
        self.user_properties.append(("svf_spec", str(spec.path)))
        self.add_marker("svf_spec")

    def runtest(self) -> None:
        state: _State = getattr(self.config, _KEY)
        res = state.evaluate(self.spec)
        if isinstance(res, SpecError):
            raise res
        got = next(c for c in res.conditions if c.condition == self.condition)
        for k in ("measured", "threshold", "verdict"):
            self.user_properties.append((k, str(getattr(got, k))))
        if not got.passed:
            raise ConditionFailed(got.line())

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance((ConditionFailed, SpecError)):
            kind = "spec error" if excinfo.errisinstance(SpecError) else "condition failed"
            return f"{self.spec.name} / {kind}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.spec.name}::{self.condition}"
