"""Where tasks run: in this process (:class:`LocalEngine`, the default, no Ray needed) or on
a Ray cluster (:class:`RayEngine`: a local cluster started for the run, or an existing one
joined by address). Both take the same jobs and report each outcome through one callback, as
it finishes; the callback may return new tasks (those the finished one released), which are
submitted at once. A job that raises is retried up to its ``max_retries`` and then reported as
failed with its error, while every other job completes."""

from __future__ import annotations

import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .plan import Resources
from .tasks import Task

__all__ = ["Outcome", "LocalEngine", "RayEngine", "make_engine", "ENGINES"]

ENGINES = ("local", "ray")
Fn = Callable[[str, dict, float], dict]  # (kind, payload, num_cpus) -> result
OnDone = Callable[["Outcome"], Iterable[Task] | None]  # an outcome -> the tasks it releases


@dataclass(frozen=True)
class Outcome:
    """``result`` (None when the task failed), ``error`` (the last attempt's exception, one
    line, plus its traceback in ``trace``), ``attempts`` (None when the engine does not count
    them) and ``seconds``: the task's own run time, never its time waiting in a queue (local:
    all its attempts; Ray: the attempt that returned, timed on the worker; a failed Ray task:
    from submission to failure)."""

    task: Task
    result: dict | None
    error: str | None
    attempts: int | None
    seconds: float
    trace: str | None = None


class LocalEngine:
    """Tasks one after another in this process, in submission order (released tasks join the
    end of the queue)."""

    name = "local"

    def run(self, fn: Fn, tasks: list[Task], on_done: OnDone) -> None:
        queue = deque(tasks)
        while queue:
            t = queue.popleft()
            t0 = time.perf_counter()
            for attempt in range(1, t.resources.max_retries + 2):
                try:
                    res = fn(t.kind, t.payload, t.resources.num_cpus)
                except Exception as e:  # noqa: BLE001 -- a task's failure is reported, not fatal to the sweep
                    err, trace = f"{type(e).__name__}: {e}", traceback.format_exc()
                    continue
                queue.extend(on_done(Outcome(t, res, None, attempt, time.perf_counter() - t0)) or ())
                break
            else:
                queue.extend(on_done(Outcome(t, None, err, t.resources.max_retries + 1, time.perf_counter() - t0,
                                             trace)) or ())

    def check_requests(self, requests: list[tuple[str, Resources]]) -> None:
        """Nothing to check: in this process a task gets what it asks for (its ``num_cpus``
        torch threads; a GPU when CUDA is present)."""

    def close(self) -> None:
        pass


def _timed(fn: Fn, kind: str, payload: dict, num_cpus: float) -> tuple[dict, float]:
    """``fn``'s result and its run time, measured where it runs (a Ray worker)."""
    t0 = time.perf_counter()
    res = fn(kind, payload, num_cpus)
    return res, time.perf_counter() - t0


def _token_auth_for_joining() -> None:
    """Join a cluster the way ``ray start --head`` set it up. ``ray start`` turns Ray's token
    authentication on when a token is available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``, which any earlier local ``ray.init`` creates), but a process that
    only calls ``ray.init(address=...)`` does not, and is then refused (``InvalidAuthToken``,
    reported as "Failed to connect"). So the same rule is applied here, with Ray's own function
    for it (it also refreshes Ray's cached config, which setting ``RAY_AUTH_MODE`` alone would
    not); ``RAY_AUTH_MODE`` set by the user wins, and a cluster without token authentication
    accepts such a client too. A Ray without token authentication has no such function."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class RayEngine:
    """Tasks as Ray remote functions with the plan's ``num_cpus``/``num_gpus`` and
    ``max_retries`` (application exceptions included). ``address=None`` starts a local
    cluster for the run (``num_cpus`` CPUs, default all) and stops it on :meth:`close`;
    an address joins that cluster (with Ray's token authentication when a token is
    available: :func:`_token_auth_for_joining`) and leaves it running."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise ValueError("--engine ray needs Ray: pip install 'svfcheck[sweep]' (or pip install ray)") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            try:
                if address is None:  # "local": a new cluster even when one is running here (ray start --head)
                    ray.init(address="local", num_cpus=num_cpus, **kw)
                else:
                    _token_auth_for_joining()
                    ray.init(address=address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
                raise ValueError(f"cannot start or join {where}: {e}") from None

    def check_resources(self, tasks: list[Task]) -> None:
        """``ValueError`` when a task asks for more CPUs or GPUs than the whole cluster has (Ray
        would wait for them forever)."""
        self.check_requests([(f"task {t.label!r}", t.resources) for t in tasks])

    def check_requests(self, requests: list[tuple[str, Resources]]) -> None:
        """:meth:`check_resources` for named requests (``Plan.resource_requests``: checked
        before any work, so that a sweep does not stop after hours of training)."""
        total = self.ray.cluster_resources()
        for who, r in requests:
            for what, asked in (("CPU", r.num_cpus), ("GPU", r.num_gpus)):
                if asked > total.get(what, 0.0):
                    raise ValueError(f"{who} asks for {asked:g} {what}(s) but the Ray cluster has "
                                     f"{total.get(what, 0.0):g}; lower num_{what.lower()}s in the plan's resources "
                                     "or join a cluster that has them (--address)")

    def run(self, fn: Fn, tasks: list[Task], on_done: OnDone) -> None:
        ray = self.ray
        remote = ray.remote(_timed)
        pending: dict[Any, tuple[Task, float]] = {}

        def submit(new: Iterable[Task] | None) -> None:
            new = list(new or ())
            if not new:  # most finished tasks release nothing: no cluster query for them
                return
            self.check_resources(new)
            for t in new:
                r = t.resources
                ref = remote.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus, max_retries=r.max_retries,
                                     retry_exceptions=True).remote(fn, t.kind, t.payload, r.num_cpus)
                pending[ref] = (t, time.perf_counter())

        submit(tasks)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                t, t0 = pending.pop(ref)
                try:
                    res, seconds = ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- RayTaskError wraps the task's own exception
                    cause = getattr(e, "cause", None) or e
                    submit(on_done(Outcome(t, None, f"{type(cause).__name__}: {cause}".splitlines()[0], None,
                                           time.perf_counter() - t0, str(e))))
                    continue
                submit(on_done(Outcome(t, res, None, None, seconds)))

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def make_engine(name: str, address: str | None = None, num_cpus: int | None = None):
    if name == "local":
        if address is not None:
            raise ValueError("--address joins a Ray cluster; it needs --engine ray")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address, num_cpus)
    raise ValueError(f"unknown engine {name!r}; choose one of {ENGINES}")
