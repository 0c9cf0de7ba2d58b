"""Engines and the result store, with stand-in task functions: retries, failures reported
while the other tasks finish, the same outcomes on Ray as in-process, released tasks
submitted as soon as their releaser finishes, a store that trusts a file only when it is whole
and names its key, and the lock that keeps two sweeps out of one folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from svfcheck.sweep.engines import LocalEngine, make_engine
from svfcheck.sweep.plan import Resources
from svfcheck.sweep.store import ResultStore
from svfcheck.sweep.tasks import Task


def _tasks(retries: int) -> list[Task]:
    r = Resources(num_cpus=1, max_retries=retries)
    return [Task("checkpoint", name, f"k-{name}", {"name": name}, r) for name in ("flaky", "broken", "fine")]


def _fn(counter_dir: Path):
    """``flaky`` raises on its first two calls, ``broken`` always; calls are counted in files
    (a Ray worker is another process: no shared memory)."""

    def fn(kind: str, payload: dict, num_cpus: float) -> dict:
        f = counter_dir / payload["name"]
        n = int(f.read_text()) + 1 if f.exists() else 1
        f.write_text(str(n))
        if payload["name"] == "flaky" and n <= 2:
            raise RuntimeError(f"flaky failure {n}")
        if payload["name"] == "broken":
            raise ValueError("always broken\nsecond line")
        return {"name": payload["name"], "calls": n, "cpus": num_cpus}

    return fn


def _sleeper():
    """A task that sleeps 0.3 s (a closure: Ray ships it by value, the test module is not
    importable on a worker)."""

    def fn(kind: str, payload: dict, num_cpus: float) -> dict:
        time.sleep(0.3)
        return {"slept": 0.3}

    return fn


def _napper():
    """A task that sleeps ``payload["nap"]`` seconds and returns when it ended (wall clock)."""

    def fn(kind: str, payload: dict, num_cpus: float) -> dict:
        time.sleep(payload["nap"])
        return {"name": payload["name"], "ended": time.time()}

    return fn


def _released(engine) -> dict[str, dict]:
    """``slow`` (1.5 s) and ``fast`` (0.1 s) start together; ``fast`` finishing releases
    ``child`` (0.1 s), which releases ``grandchild``; a failed outcome would release nothing."""
    r = Resources(num_cpus=1, max_retries=0)

    def task(name, nap):
        return Task("checkpoint", name, f"k-{name}", {"name": name, "nap": nap}, r)

    follow = {"fast": [task("child", 0.1)], "child": [task("grandchild", 0.1)]}
    got: dict[str, dict] = {}

    def on_done(o):
        got[o.task.label] = o.result
        return follow.get(o.task.label)

    engine.run(_napper(), [task("slow", 1.5), task("fast", 0.1)], on_done)
    return got


def test_local_engine_runs_released_tasks_after_the_queue():
    got = _released(LocalEngine())
    assert set(got) == {"slow", "fast", "child", "grandchild"}
    # one at a time, in submission order: released tasks join the end of the queue
    assert got["slow"]["ended"] < got["fast"]["ended"] < got["child"]["ended"] < got["grandchild"]["ended"]


def _run(engine, tmp_path, retries):
    got = {}
    engine.run(_fn(tmp_path), _tasks(retries), lambda o: got.__setitem__(o.task.label, o))
    return got, {p.name: int(p.read_text()) for p in tmp_path.iterdir()}


def test_local_engine_retries_and_reports_failures(tmp_path):
    got, calls = _run(LocalEngine(), tmp_path, retries=2)
    assert got["flaky"].result == {"name": "flaky", "calls": 3, "cpus": 1} and got["flaky"].attempts == 3
    assert got["broken"].result is None and got["broken"].attempts == 3 and calls["broken"] == 3
    assert got["broken"].error.startswith("ValueError: always broken") and "Traceback" in got["broken"].trace
    assert got["fine"].result["calls"] == 1 and calls == {"flaky": 3, "broken": 3, "fine": 1}


def test_local_engine_gives_up_after_max_retries(tmp_path):
    got, calls = _run(LocalEngine(), tmp_path, retries=1)
    assert got["flaky"].result is None and "flaky failure 2" in got["flaky"].error and calls["flaky"] == 2


def test_engine_choice_is_checked():
    with pytest.raises(ValueError, match="--address joins a Ray cluster; it needs --engine ray"):
        make_engine("local", address="127.0.0.1:1")
    with pytest.raises(ValueError, match="unknown engine 'dask'"):
        make_engine("dask")


@pytest.mark.gpu  # starts a Ray cluster (≈ 6 s)
def test_ray_engine_retries_and_reports_failures_like_local(tmp_path):
    engine = make_engine("ray", num_cpus=2)
    try:
        got, calls = _run(engine, tmp_path, retries=2)
        # a task asking for a GPU the cluster does not have is refused up front, not queued forever
        gpu = Task("checkpoint", "needs-gpu", "k-gpu", {"name": "fine"}, Resources(num_gpus=0.5))
        with pytest.raises(ValueError, match=r"'needs-gpu' asks for 0.5 GPU\(s\) but the Ray cluster has 0"):
            engine.run(_fn(tmp_path), [gpu], lambda o: None)
        many = Task("checkpoint", "needs-cpus", "k-cpu", {"name": "fine"}, Resources(num_cpus=3))
        with pytest.raises(ValueError, match=r"asks for 3 CPU\(s\) but the Ray cluster has 2"):
            engine.run(_fn(tmp_path), [many], lambda o: None)
        # each task's seconds are its own run time, not its wait in the queue: three tasks that
        # each take the whole cluster run one after another, so their run times fit in the wall
        # time (with queueing counted they would sum to about twice it)
        slow = [Task("checkpoint", f"slow-{i}", f"k-slow-{i}", {"name": "fine"}, Resources(num_cpus=2))
                for i in range(3)]
        times: dict = {}
        t0 = time.perf_counter()
        engine.run(_sleeper(), slow, lambda o: times.__setitem__(o.task.label, o.seconds if o.result else o.error))
        wall = time.perf_counter() - t0
        assert len(times) == 3 and all(isinstance(s, float) and s >= 0.3 for s in times.values()) and sum(times.values()) <= wall, (times, wall)
        # released tasks are submitted as soon as the task that releases them finishes: with two
        # CPUs, ``child`` and ``grandchild`` both finish while ``slow`` is still running (a
        # driver that waited for the whole batch first would run them after it)
        rel = _released(engine)
        assert set(rel) == {"slow", "fast", "child", "grandchild"}
        assert rel["fast"]["ended"] < rel["child"]["ended"] < rel["grandchild"]["ended"] < rel["slow"]["ended"], rel
    finally:
        engine.close()
    assert got["flaky"].result == {"name": "flaky", "calls": 3, "cpus": 1} and calls["flaky"] == 3
    assert got["broken"].result is None and calls["broken"] == 3 and "always broken" in got["broken"].error
    assert got["fine"].result["calls"] == 1


def test_store_round_trip_and_damaged_files(tmp_path):
    store = ResultStore(tmp_path)
    t, other = _tasks(0)[:2]
    assert store.get(t) is None
    store.put(t, {"x": [1, 2]}, 1.23456, 1)
    assert store.get(t) == {"x": [1, 2]}
    doc = json.loads(store.path(t).read_text())
    assert doc["key"] == t.key and doc["seconds"] == 1.235 and doc["payload"] == {"name": "flaky"}
    assert not list(store.path(t).parent.glob(".*.tmp"))  # the temporary file was renamed, not left behind
    # a truncated file (a kill while writing without the rename) is set aside and recomputed
    store.path(t).write_text(store.path(t).read_text()[:20])
    assert store.get(t) is None and store.path(t).with_name(store.path(t).name + ".bad").is_file()
    # a result stored under another task's name is never trusted
    store.put(other, {"y": 1}, 0.0, 1)
    store.path(other).rename(store.path(t))
    assert store.get(t) is None
    with pytest.raises(ValueError):  # NaN is not JSON: refused, and nothing half-written stays
        store.put(other, {"y": float("nan")}, 0.0, 1)
    assert not store.path(other).exists() and not list(store.path(other).parent.glob(".*.tmp"))


def test_a_second_sweep_into_the_same_folder_is_refused_until_the_first_is_gone(tmp_path, tiny_spec, capsys):
    """Two drivers into one folder would train the same runs into the same run folders at
    once: the second is refused (exit 2, naming the holder and what to do) while the first
    holds ``OUT/.sweep.lock``; a killed holder releases it, and the sweep then runs."""
    from svfcheck.sweep.cli import main

    plan = tmp_path / "plan.toml"
    plan.write_text('[[analysis]]\nname = "tiny"\nspec = "tiny.toml"\n')
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import fcntl, os, time
        fh = open({str(out / ".sweep.lock")!r}, "a+")
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.write(f"pid {{os.getpid()}}"); fh.flush()
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main([str(plan), "--out", str(out), "--quiet", "--no-figures"])
        err = capsys.readouterr().err
        assert rc == 2 and not (out / "tasks").exists()
        assert f"another svfcheck sweep (pid {holder.pid}) is running into {out}; wait for it" in err, err
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    assert main([str(plan), "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert json.loads((out / "sweep.json").read_text())["n_computed"] == 1


@pytest.mark.parametrize("planted", ["symlink", "folder"])
def test_a_planted_lock_file_is_refused_not_followed(tmp_path, tiny_spec, capsys, planted):
    """``OUT/.sweep.lock`` planted as a symlink (to a file the driver would otherwise truncate)
    or as a folder: exit 2 naming the path, and the symlink's target is untouched."""
    from svfcheck.sweep.cli import main

    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if planted == "symlink":
        (out / ".sweep.lock").symlink_to(victim)
    else:
        (out / ".sweep.lock").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text('[[analysis]]\nname = "s"\nspec = "tiny.toml"\n')
    rc = main([str(plan), "--out", str(out), "--quiet", "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot use {out / '.sweep.lock'} as the sweep's lock file" in err, err
    assert victim.read_text() == "keep me" and not (out / "tasks").exists()
