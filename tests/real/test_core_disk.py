"""The persistent core cache (docs/math.md §4.6): a second decomposition reads its cores from
disk and gives the same bits; a file is used only under its key and CRC, so damaged, truncated,
foreign, planted or misplaced files are ignored (with a warning) and rewritten; concurrent
writers and killed writes never leave a partial file where a reader looks; the store stays
within its size bound; a location that cannot be used is an error naming the variable."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from svfcheck.real import core_disk
from svfcheck.real.core_disk import BLOCK, CoreCacheError, CoreDisk, default_disk, layer_key
from svfcheck.real.decompose import decompose
from svfcheck.real.heads import extract_heads
from svfcheck.real.svd_cache import SVDCache

FIELDS = ("terms", "contributions", "contributions_rotated", "contributions_paper_control", "singular_values",
          "reconstruction_error", "rolls_tovee", "k")


@pytest.fixture(scope="module")
def llama(tiny):
    return tiny.problem("llama", n=40, batch=2)


def _run(heads, cap, pairs, disk, dtype=torch.float32):
    cache = SVDCache(heads, lean=True, disk=disk)
    return decompose(heads, cap, pairs, cache=cache, dtype=dtype, seed=1), cache


def _same(a, b):
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_run_reads_every_core_from_disk_with_the_same_bits(llama, tmp_path, dtype):
    _, heads, cap, pairs = llama
    disk = CoreDisk(tmp_path, 2**30)
    want, c0 = _run(heads, cap, pairs, None, dtype)
    first, c1 = _run(heads, cap, pairs, disk, dtype)
    second, c2 = _run(heads, cap, pairs, CoreDisk(tmp_path, 2**30), dtype)
    _same(first, want)
    _same(second, want)
    assert c1.stats.computed == c0.stats.computed > 0 and c1.stats.disk == 0
    assert c2.stats.computed == 0 and c2.stats.disk == c0.stats.computed
    assert len(disk.files()) > 0


def _damage(kind: str, path: Path, other: Path) -> None:
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) - 100])
    elif kind == "flipped":
        b = bytearray(raw)
        b[-7] ^= 0x10
        path.write_bytes(bytes(b))
    elif kind == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":  # another (head, block)'s valid file planted under this name
        path.write_bytes(other.read_bytes())
    elif kind == "header":  # the recorded CRC altered to match nothing
        path.write_bytes(raw.replace(b'"crc32": ', b'"crc32": 1', 1))
    elif kind == "folder":
        path.unlink()
        path.mkdir()
    elif kind == "symlink":
        path.unlink()
        path.symlink_to(other)


@pytest.mark.parametrize("kind", ["truncated", "flipped", "garbage", "empty", "foreign", "header", "folder", "symlink"])
def test_untrusted_files_are_ignored_and_rebuilt(llama, tmp_path, kind, capsys):
    _, heads, cap, pairs = llama
    want, _ = _run(heads, cap, pairs, CoreDisk(tmp_path, 2**30))
    files = sorted(p for _, _, p in CoreDisk(tmp_path, 2**30).files())
    assert len(files) >= 2
    target, other = files[0], files[1]
    _damage(kind, target, other)
    got, cache = _run(heads, cap, pairs, CoreDisk(tmp_path, 2**30))
    _same(got, want)
    assert cache.stats.computed > 0  # the damaged file's entries were computed again
    err = capsys.readouterr().err
    assert f"ignoring the core cache file {target}" in err
    if kind != "folder":  # rewritten: a third run finds everything
        again, c3 = _run(heads, cap, pairs, CoreDisk(tmp_path, 2**30))
        _same(again, want)
        assert c3.stats.computed == 0 and target.is_file() and not target.is_symlink()


def test_the_key_follows_the_weights_and_dtype(llama):
    model, heads, _, _ = llama
    cache = SVDCache(heads)
    k32 = layer_key(heads.layers[0], cache.factors(0), torch.float32, "qr")
    assert k32 == layer_key(heads.layers[0], cache.factors(0), torch.float32, "qr")
    assert k32 != layer_key(heads.layers[0], cache.factors(0), torch.float64, "qr")
    assert k32 != layer_key(heads.layers[1], cache.factors(1), torch.float32, "qr")
    with torch.no_grad():
        w = next(p for n, p in model.named_parameters() if "layers.0.self_attn.k_proj.weight" in n)
        w[0, 0] += 1e-12  # one weight, by less than float32's resolution of the others would notice
    moved = extract_heads(model)
    assert layer_key(moved.layers[0], SVDCache(moved).factors(0), torch.float32, "qr") != k32
    with torch.no_grad():
        w[0, 0] -= 1e-12


def test_killed_writes_leave_nothing_a_reader_uses(llama, tmp_path):
    """A write is a temporary file renamed into place: a kill before the rename leaves only a
    ``.tmp-`` file, which readers never open and the next writer of that key removes."""
    _, heads, cap, pairs = llama
    want, _ = _run(heads, cap, pairs, CoreDisk(tmp_path, 2**30))
    f = sorted(p for _, _, p in CoreDisk(tmp_path, 2**30).files())[0]
    leftover = f.parent / f".{f.name}.tmp-killed"
    leftover.write_bytes(f.read_bytes()[:1000])
    f.unlink()
    got, cache = _run(heads, cap, pairs, CoreDisk(tmp_path, 2**30))
    _same(got, want)
    assert not leftover.exists() and f.is_file() and cache.stats.computed > 0


def _writer(root: str, seed: int, n: int) -> None:
    """One process storing entries of a synthetic table, all under one key (for the race test)."""
    from types import SimpleNamespace

    torch.manual_seed(seed)
    H, T, dh, lo = 2, 3 * BLOCK, 4, -3 * BLOCK
    a = lambda *s: torch.randn(*s, dtype=torch.float32)  # noqa: E731
    tab = SimpleNamespace(lo=lo, T=T, S=a(H, T, dh), dtype=torch.float32)
    tab.arrays = lambda: (full, tab.S, full, full)
    full = torch.full((H, T, dh, dh), float(seed))
    tab.S = torch.full((H, T, dh), float(seed))
    disk = CoreDisk(root, 2**30)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        rows = torch.zeros(H, T, dtype=torch.bool)
        rows[torch.as_tensor(rng.integers(0, H, 20)), torch.as_tensor(rng.integers(0, T, 20))] = True
        disk.store("k" * 64, tab, rows)


def test_concurrent_writers_leave_complete_files(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, 30)) for s in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    disk = CoreDisk(tmp_path, 2**30)
    files = disk.files()
    assert files and not list((tmp_path / f"v{core_disk.FORMAT}").glob("*/.*.tmp-*"))
    for _, _, path in files:
        head, block = (int(x[1:]) for x in path.stem.split("_"))
        got = disk._read(path, "k" * 64, head, block, torch.float32, 4)
        assert got is not None, path  # valid: key, CRC, sizes
        offs, arrays = got
        for i in range(len(offs)):  # each entry whole, from one writer
            assert len(np.unique(np.concatenate([a[i].ravel() for a in arrays]))) == 1


def test_size_bound_deletes_the_files_used_longest_ago(llama, tmp_path):
    _, heads, cap, pairs = llama
    _run(heads, cap, pairs, CoreDisk(tmp_path, 2**30))
    files = CoreDisk(tmp_path, 2**30).files()
    total = sum(s for _, s, _ in files)
    for i, (_, _, p) in enumerate(files):  # make the age order known
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
    bound = total // 2
    d = CoreDisk(tmp_path, bound)
    d.trim()
    left = d.files()
    assert sum(s for _, s, _ in left) <= 0.8 * bound
    kept = {p for _, _, p in left}
    assert kept and kept == {p for _, _, p in files[len(files) - len(kept):]}  # the newest survive


def test_unusable_locations_and_sizes_are_errors_naming_the_variable(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("SVFCHECK_CORE_CACHE", str(f))
    with pytest.raises(CoreCacheError, match=f"SVFCHECK_CORE_CACHE='{f}'.*is a file"):
        default_disk()
    monkeypatch.setenv("SVFCHECK_CORE_CACHE", str(tmp_path / "ok"))
    for bad in ("-1", "0", "nan", "lots"):
        monkeypatch.setenv("SVFCHECK_CORE_CACHE_GB", bad)
        with pytest.raises(CoreCacheError, match="SVFCHECK_CORE_CACHE_GB"):
            default_disk()
    monkeypatch.setenv("SVFCHECK_CORE_CACHE_GB", "0.5")
    assert default_disk().max_bytes == 2**29
    monkeypatch.setenv("SVFCHECK_CORE_CACHE", "off")
    assert default_disk() is None


def test_a_store_that_cannot_be_written_warns_once_and_the_analysis_goes_on(llama, tmp_path, capsys, monkeypatch):
    """A full disk (or a store made read-only after it was opened): one warning, no more
    writes, the same numbers."""
    _, heads, cap, pairs = llama
    disk = CoreDisk(tmp_path, 2**30)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk, "_write", full)
    got, cache = _run(heads, cap, pairs, disk)
    want, _ = _run(heads, cap, pairs, None)
    _same(got, want)
    assert capsys.readouterr().err.count("cannot write the core cache") == 1 and disk.write_errors == 1
    assert not disk.files()
