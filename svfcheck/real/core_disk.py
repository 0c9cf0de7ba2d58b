"""The persistent core cache: core SVD entries on disk, so that a second analysis of the same
model skips the cold cost (docs/math.md §4.6).

:class:`CoreDisk` stores the entries ``(Ũ, S, Ṽ, F)`` of an
:class:`~svfcheck.real.svd_cache.SVDCache` table in the table's dtype, one file per (layer key,
head, block of :data:`BLOCK` offsets), under ``$SVFCHECK_CORE_CACHE`` or
``<svfcheck cache>/cores`` (:func:`~svfcheck.real.model_cache.cache_root`; ``SVFCHECK_CORE_CACHE=off``
turns it off), bounded to ``$SVFCHECK_CORE_CACHE_GB`` (default 4) by deleting the files used
longest ago. The layer key (:func:`layer_key`) hashes everything a core is computed from; a
file is used only when its header names that key, its head, block, dtype and shapes and its
payload has the recorded CRC-32, else it is ignored (with a warning) and rewritten when its
entries are next computed. Writes go to a temporary file renamed into place under a lock per
layer key (as the model cache's conversions, :mod:`svfcheck.real.model_cache`), so concurrent
runs and killed runs never leave a partial file where a reader looks; leftovers of killed
writes are removed under that lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .model_cache import _file_lock, _file_on_path, cache_root

__all__ = ["CoreDisk", "CoreCacheError", "layer_key", "default_disk", "BLOCK", "FORMAT"]

log = logging.getLogger(__name__)

#: Offsets per file (one head, Δ in ``[b·BLOCK, (b+1)·BLOCK)``).
BLOCK = 64
#: File format and core-algorithm version: bump when a file's layout or how a core is computed
#: (core_svd, its certificate, the sign convention, F) changes, so that old files are not used.
FORMAT = 1
_MAGIC = b"SVFCORE1"
_DEFAULT_GB = 4.0
_OFF = ("off", "0", "none", "no", "false")


_POOL: ThreadPoolExecutor | None = None


def _io_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        from .threads import svd_workers

        _POOL = ThreadPoolExecutor(max_workers=svd_workers(), thread_name_prefix="svfcheck-core-disk")
    return _POOL


class CoreCacheError(ValueError):
    """The core cache's location or size setting cannot be used (a user error: names the variable)."""


def _bytes_of(t: torch.Tensor | np.ndarray | None) -> bytes:
    if t is None:
        return b"-"
    if isinstance(t, np.ndarray):
        return str(t.dtype).encode() + str(t.shape).encode() + np.ascontiguousarray(t).tobytes()
    t = t.detach().cpu().contiguous()
    return str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.view(-1).view(torch.uint8).numpy().tobytes()


def layer_key(lh, factors, dtype: torch.dtype, route: str) -> str:
    """sha256 (hex) of everything a layer's core entries are computed from: the layer's query
    and key weights and biases, QK-norm gains and kind, rotary spec, its factorisation (the
    ``R`` factors, key-side factor and kv map — computed from the weights, hashed too so that a
    different LAPACK result is a different key), the factorisation route, the table's dtype,
    the file format and the torch version."""
    h = hashlib.sha256()
    rot = lh.rotary
    meta = {"format": FORMAT, "torch": torch.__version__, "route": route, "dtype": str(dtype),
            "n_heads": lh.n_heads, "n_kv_heads": lh.n_kv_heads, "head_dim": lh.head_dim,
            "norm_center": lh.norm_center, "norm_scope": lh.norm_scope,
            "rotary": None if rot is None else {"rotary_dim": rot.rotary_dim, "scaling": repr(float(rot.attention_scaling))}}
    h.update(json.dumps(meta, sort_keys=True).encode())
    parts = [lh.W_Q, lh.W_K, lh.b_Q, lh.b_K, lh.q_gain, lh.k_gain,
             None if rot is None else np.asarray(rot.inv_freq, dtype=np.float64),
             None if rot is None or rot.head_order is None else np.asarray(rot.head_order),
             factors.R_q, factors.R_k, factors.GRkT, factors.RqL, factors.kv_index]
    for p in parts:
        h.update(_bytes_of(p))
    return h.hexdigest()


def _warn(msg: str) -> None:
    from .model_cache import _warn as warn

    warn(msg)


def default_disk() -> CoreDisk | None:
    """The disk store the settings of this process ask for: ``None`` when ``SVFCHECK_CORE_CACHE``
    is ``off``; else a :class:`CoreDisk` at ``$SVFCHECK_CORE_CACHE`` or ``<cache_root>/cores``,
    bounded by ``$SVFCHECK_CORE_CACHE_GB``. :class:`CoreCacheError` for a location that is a
    file or not writable, or a size that is not a positive number."""
    env = os.environ.get("SVFCHECK_CORE_CACHE")
    if env is not None and env.strip().lower() in _OFF:
        return None
    gb_env = os.environ.get("SVFCHECK_CORE_CACHE_GB")
    gb = _DEFAULT_GB
    if gb_env is not None:
        try:
            gb = float(gb_env)
        except ValueError:
            gb = float("nan")
        if not (np.isfinite(gb) and 0 < gb <= 1e6):
            raise CoreCacheError(f"SVFCHECK_CORE_CACHE_GB={gb_env!r}: expected a size in GB, a number in (0, 1e6]")
    if env:
        root, origin = Path(env).expanduser(), f"SVFCHECK_CORE_CACHE={env!r}"
    else:
        root = cache_root() / "cores"
        src = os.environ.get("SVFCHECK_CACHE")
        origin = f"SVFCHECK_CACHE={src!r}" if src else f"the default cache folder {root}"
    return CoreDisk(root, int(gb * 2**30), origin)


class CoreDisk:
    """Core entries on disk under ``root`` (docs/math.md §4.6), at most ``max_bytes`` in all.

    :meth:`load` fills rows of a table from the files of its layer key, :meth:`store` writes
    rows into them. ``origin`` names where ``root`` came from, for error messages."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, origin: str | None = None):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.base = self.root / f"v{FORMAT}"
        origin = origin or f"core cache {self.root}"
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.base)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            blocker = _file_on_path(self.base)
            why = f"{blocker} is a file, not a folder" if blocker is not None else f"cannot write there ({exc.strerror or exc})"
            raise CoreCacheError(f"{origin}: cannot use {self.base} for the core cache: {why}. Fix: point "
                                 "SVFCHECK_CORE_CACHE at a writable folder, or set SVFCHECK_CORE_CACHE=off") from exc
        self._warned: set[str] = set()
        self._total: int | None = None  # bytes on disk: scanned, plus what this process wrote since
        self.write_errors = 0

    # ----------------------------------------------------------------------------- files

    def _dir(self, key: str) -> Path:
        return self.base / key

    def _path(self, key: str, head: int, block: int) -> Path:
        return self._dir(key) / f"h{head}_b{block}.core"

    def _ignore(self, path: Path, why: str) -> None:
        if str(path) not in self._warned:
            self._warned.add(str(path))
            _warn(f"ignoring the core cache file {path}: {why}; its entries are computed again")

    def _read(self, path: Path, key: str, head: int, block: int, dtype: torch.dtype, dh: int) -> tuple | None:
        """``(offsets, (Ũ, S, Ṽ, F))`` of a file — a list of m offsets Δ and four read-only arrays
        with m rows — or None when it is missing or not to be trusted."""
        try:
            with open(path, "rb") as fh:
                raw = bytearray(os.fstat(fh.fileno()).st_size)  # writable: arrays on it need no copy
                raw = raw[: fh.readinto(raw)]
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._ignore(path, f"unreadable ({exc.strerror or exc})")
            return None
        why = None
        if len(raw) < len(_MAGIC) + 4 or raw[: len(_MAGIC)] != _MAGIC:
            why = "not a core cache file"
        else:
            (n,) = struct.unpack("<I", raw[len(_MAGIC) : len(_MAGIC) + 4])
            start = len(_MAGIC) + 4 + n
            try:
                hdr = json.loads(raw[len(_MAGIC) + 4 : start].decode()) if start <= len(raw) else None
            except (UnicodeDecodeError, ValueError):
                hdr = None
            isz = torch.empty(0, dtype=dtype).element_size()
            if not isinstance(hdr, dict):
                why = "damaged header"
            elif (hdr.get("key"), hdr.get("head"), hdr.get("block"), hdr.get("dtype"), hdr.get("dh")) != (key, head, block, str(dtype), dh):
                why = "written for another layer, head, offset block or dtype (its key does not match)"
            else:
                offs = hdr.get("offsets")
                ok = (isinstance(offs, list) and all(isinstance(d, int) and not isinstance(d, bool) and block * BLOCK <= d < (block + 1) * BLOCK for d in offs)
                      and len(set(offs)) == len(offs))
                payload = memoryview(raw)[start:]
                if not ok:
                    why = "damaged offset list"
                elif len(payload) != len(offs) * (3 * dh * dh + dh) * isz:
                    why = f"{len(payload)} payload bytes where {len(offs) * (3 * dh * dh + dh) * isz} were written (truncated?)"
                elif zlib.crc32(payload) != hdr.get("crc32"):
                    why = "its content does not match the CRC-32 recorded with it (damaged)"
        if why is not None:
            self._ignore(path, why)
            return None
        m = len(offs)
        a = np.frombuffer(payload, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        q, s = m * dh * dh, m * dh
        Ut, S, Vt, F = (a[:q].reshape(m, dh, dh), a[q : q + s].reshape(m, dh), a[q + s : 2 * q + s].reshape(m, dh, dh),
                        a[2 * q + s :].reshape(m, dh, dh))
        return offs, (Ut, S, Vt, F)

    def _write(self, path: Path, key: str, head: int, block: int, dtype: torch.dtype, dh: int, entries: dict) -> None:
        offs = sorted(entries)
        arrays = [np.stack([entries[d][k] for d in offs]) for k in range(4)]
        crc, size = 0, 0
        for x in arrays:
            crc, size = zlib.crc32(x, crc), size + x.nbytes
        hdr = json.dumps({"key": key, "head": head, "block": block, "dtype": str(dtype), "dh": dh, "offsets": offs,
                          "crc32": crc}).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + struct.pack("<I", len(hdr)) + hdr)
                for x in arrays:
                    fh.write(memoryview(x).cast("B"))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._total is not None:
            self._total += size

    # ----------------------------------------------------------------------------- API

    def load(self, key: str, tab, need: torch.Tensor) -> torch.Tensor:
        """Fill the rows ``need`` (H, T) of the table ``tab`` (``_CoreTable``) found on disk;
        returns which were (H, T) bool. Rows not found, or in files not to be trusted, are left."""
        return self.load_many([(key, tab, need)])[0]

    def load_many(self, items: list) -> list[torch.Tensor]:
        """:meth:`load` of several ``(key, table, need)``, all their files read on the core
        workers' count of threads (reads, CRCs and copies release the GIL; each file writes its
        own rows)."""
        jobs, gots = [], []
        for k, (key, tab, need) in enumerate(items):
            gots.append(torch.zeros_like(need))
            h_idx, t_idx = torch.nonzero(need, as_tuple=True)
            d = t_idx.numpy() + tab.lo
            hs = h_idx.numpy()
            blocks = np.floor_divide(d, BLOCK)
            order = np.lexsort((d, blocks, hs))
            hs, blocks, d = hs[order], blocks[order], d[order]
            cut = np.flatnonzero((np.diff(hs) != 0) | (np.diff(blocks) != 0)) + 1
            jobs += [(k, key, tab, int(hs[a]), int(blocks[a]), d[a:b]) for a, b in zip(np.r_[0, cut], np.r_[cut, len(d)])
                     if b > a]
        per: dict[int, list] = {}
        for j in jobs:  # one task per table (a few dozen files each): few hand-offs between threads
            per.setdefault(j[0], []).append(j)

        def table(js):
            return [r for r in (self._load_file(*j[1:]) for j in js) if r is not None]

        for k, rows in zip(per, _io_pool().map(table, per.values())):
            for r in rows:
                gots[k].view(-1)[r] = True
        return gots

    def _load_file(self, key: str, tab, head: int, block: int, wanted: np.ndarray) -> torch.Tensor | None:
        """Rows of ``tab`` filled from one file (flat head·T + t indices), or None."""
        path = self._path(key, head, block)
        read = self._read(path, key, head, block, tab.dtype, tab.S.shape[-1])
        if read is None:
            return None
        offs, arrays = read
        pos = {o: i for i, o in enumerate(offs)}
        take = [(pos[w], w) for w in wanted.tolist() if w in pos]
        if not take:
            return None
        idx = np.array([i for i, _ in take])
        r = torch.as_tensor([head * tab.T + w - tab.lo for _, w in take], dtype=torch.int64)
        every = len(idx) == len(offs) and bool((idx == np.arange(len(offs))).all())
        for a, src in zip(tab.arrays(), arrays):
            vals = src if every else src[idx]
            a.view(-1, src[0].size).index_copy_(0, r, torch.from_numpy(vals.reshape(len(idx), -1)))
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: deleted last
        return r

    def store(self, key: str, tab, rows: torch.Tensor) -> None:
        """Write the table's rows ``rows`` (H, T) bool to disk (see :meth:`store_many`)."""
        self.store_many([(key, tab, rows)])

    def store_many(self, items: list) -> None:
        """Write the rows ``rows`` (H, T) bool of several ``(key, table, rows)`` to disk, merged
        into their files (under each layer key's lock; atomic renames), after making room within
        the size bound; the layer keys on the core workers' count of threads. Failures to write
        are warned about once and never stop the analysis (nothing more is written)."""
        items = [(key, tab, rows) for key, tab, rows in items if bool(rows.any())]
        if not items or self.write_errors:
            return
        new = sum(int(rows.sum()) * sum(a[0, 0].numel() * a.element_size() for a in tab.arrays()) for _, tab, rows in items)
        if new > self.max_bytes:
            return  # more than the whole store may hold: nothing to keep
        if self._total is None or self._total + new > self.max_bytes:
            self.trim(self.max_bytes - new)
        for err in _io_pool().map(lambda it: self._store_key(*it), items):
            if err is not None and not self.write_errors:
                self.write_errors += 1
                _warn(f"cannot write the core cache under {self.base} ({err}); going on without storing cores")
        if self.write_errors:
            self._total = None

    def _store_key(self, key: str, tab, rows: torch.Tensor) -> str | None:
        """One layer key's rows into its files; the reason when it could not (else None)."""
        dh = tab.S.shape[-1]
        h_idx, t_idx = torch.nonzero(rows, as_tuple=True)
        d = t_idx.numpy() + tab.lo
        hs = h_idx.numpy()
        blocks = np.floor_divide(d, BLOCK)
        folder = self._dir(key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _file_lock(folder / ".lock"):
                self._remove_leftovers(folder)
                for hb in np.unique(np.stack([hs, blocks], 1), axis=0):
                    head, block = int(hb[0]), int(hb[1])
                    path = self._path(key, head, block)
                    read = self._read(path, key, head, block, tab.dtype, dh)
                    entries = {} if read is None else {o: tuple(a[i] for a in read[1]) for i, o in enumerate(read[0])}
                    for delta in d[(hs == head) & (blocks == block)].tolist():
                        t = delta - tab.lo
                        entries[delta] = tuple(a[head, t].numpy() for a in tab.arrays())
                    self._write(path, key, head, block, tab.dtype, dh, entries)
        except OSError as exc:
            return f"{exc.filename or folder}: {exc.strerror or exc}"
        return None

    @staticmethod
    def _remove_leftovers(folder: Path) -> None:
        """Temporary files of killed writes (call under the folder's lock: nobody else is writing)."""
        for p in folder.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def files(self) -> list[tuple[float, int, Path]]:
        """``(mtime, size, path)`` of every cache file, oldest first."""
        out = []
        for p in self.base.glob("*/*.core"):
            with contextlib.suppress(OSError):
                st = p.stat()
                out.append((st.st_mtime, st.st_size, p))
        return sorted(out, key=lambda x: (x[0], str(x[2])))

    def size(self) -> int:
        return sum(s for _, s, _ in self.files())

    def trim(self, target: int | None = None) -> None:
        """Make room: when the store holds more than ``target`` bytes (default: its bound),
        delete the files used longest ago until it holds at most 80% of ``target``. A file
        deleted while another run reads it is a miss there. Before each write the store trims
        to leave room for it (:meth:`store`), so it stays within its bound; runs writing at the
        same time can overshoot by what they write between two scans."""
        target = self.max_bytes if target is None else target
        files = self.files()
        total = sum(s for _, s, _ in files)
        if total > target:
            with _file_lock(self.base / ".trim.lock"):
                for _, s, p in files:
                    if total <= 0.8 * target:
                        break
                    with contextlib.suppress(OSError):
                        p.unlink()
                        total -= s
        self._total = total
