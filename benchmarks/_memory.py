"""Peak memory of one all-heads SVD route, measured in a fresh subprocess.

torch's CPU allocations bypass ``tracemalloc``, so the process's resident set is measured: in
a fresh interpreter the weights are built (in place, no freed temporaries), the kernel's
peak-RSS counter is reset (``/proc/self/clear_refs`` ← 5, Linux ≥ 4.0) and the route runs;
``peak_extra = VmHWM after − VmRSS before`` is the memory the route needed on top of the
weights (its outputs U, V included — they have the weights' shape). Where the reset is not
available, ``ru_maxrss`` growth is used instead (a lower bound if earlier peaks were higher).
One torch thread: per-thread LAPACK workspaces would otherwise make the figure depend on the
machine's core count.

Run directly: ``python benchmarks/_memory.py gpt2 cholesky [n_layers]`` prints JSON.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _measure(shape: str, route: str, n_layers: int | None) -> dict:
    import resource

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from _shapes import ROUTES, weights

    fn = ROUTES[route]
    with torch.no_grad():  # warm up LAPACK/BLAS (lazy library init) on a tiny problem: a full-size
        # warm-up would leave freed pages in the heap and hide part of the measured peak
        H = len(weights(shape, 1)[2])
        tiny = torch.randn(1, H, 8, 4, dtype=torch.float32)
        fn(tiny, tiny[:, : int(weights(shape, 1)[1].shape[1])].clone(), weights(shape, 1)[2])
    wq, wk, kv = weights(shape, n_layers)
    weights_bytes = wq.numel() * wq.element_size() + wk.numel() * wk.element_size()
    rss0 = _status_kib("VmRSS")
    method = "VmHWM reset"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        if _status_kib("VmHWM") is None or rss0 is None:
            raise OSError("no VmHWM")
    except OSError:
        method = "ru_maxrss growth"
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        out = fn(wq, wk, kv)
    if method == "VmHWM reset":
        peak_extra = (_status_kib("VmHWM") - rss0) * 1024
    else:
        peak_extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) * 1024
    out_bytes = sum(t.numel() * t.element_size() for t in out)
    return {
        "shape": shape,
        "route": route,
        "layers": int(wq.shape[0]),
        "weights_bytes": int(weights_bytes),
        "output_bytes": int(out_bytes),
        "peak_extra_bytes": int(peak_extra),
        "peak_over_weights": peak_extra / weights_bytes,
        "method": method,
    }


@functools.lru_cache(maxsize=None)
def measure(shape: str, route: str, n_layers: int | None = None, timeout: float = 600) -> dict:
    """Peak extra memory of ``route`` on ``shape`` (first ``n_layers`` layers) in a subprocess
    (cached per process: the memory test and the speed benchmark share the measurements)."""
    cmd = [sys.executable, str(HERE / "_memory.py"), shape, route] + ([] if n_layers is None else [str(n_layers)])
    # a fixed mmap threshold: every large block is mmapped and returned to the system when freed,
    # so the resident set tracks the live set (glibc otherwise raises the threshold dynamically)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    return json_subprocess(cmd, f"memory measurement {shape}/{route}", timeout, env=env)


def json_subprocess(cmd: list[str], what: str, timeout: float, **kw) -> dict:
    """Run a measurement script in a fresh process; the JSON object on its last line of output
    (``RuntimeError`` naming ``what``, with its stderr's tail, when it fails)."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python benchmarks/_memory.py SHAPE ROUTE [N_LAYERS]")
    print(json.dumps(_measure(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else None)))
