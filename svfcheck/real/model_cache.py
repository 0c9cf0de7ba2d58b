"""The svfcheck cache of converted models: where it lives, locking, GGUF conversion, integrity.

Offline GGUF models (:data:`svfcheck.real.models.OFFLINE_MODELS`) are converted once into a
normal ``transformers`` folder under :func:`cache_root` (``$SVFCHECK_CACHE`` or
``~/.cache/svfcheck``), under a file lock, into a temporary folder renamed into place when
complete. The conversion records the size and sha256 of every file it writes in a marker
(``svfcheck-conversion.json``, written last); each process checks them on first use
(:func:`_conversion_problem`) and a damaged or foreign folder is rebuilt with a message that
names the file that failed. Leftovers of killed conversions are removed under the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

log = logging.getLogger(__name__)

_CONVERSION_FORMAT = 1  # bump to invalidate cached conversions


def cache_root() -> Path:
    """User cache directory: ``$SVFCHECK_CACHE`` or ``~/.cache/svfcheck``."""
    env = os.environ.get("SVFCHECK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "svfcheck"


# --------------------------------------------------------------------------- cache location


def _cache_origin(cache_dir: str | os.PathLike | None) -> tuple[str, str]:
    """(where the cache location came from, what to do about it) for error messages."""
    if cache_dir is not None:
        return f"cache_dir={str(cache_dir)!r}", "pass a writable folder as cache_dir"
    env = os.environ.get("SVFCHECK_CACHE")
    todo = "point SVFCHECK_CACHE at a writable folder (e.g. `export SVFCHECK_CACHE=$HOME/svfcheck-cache`)"
    if env:
        return f"SVFCHECK_CACHE={env!r}", todo + " or unset it to use ~/.cache/svfcheck"
    return f"the default cache folder {cache_root()} (SVFCHECK_CACHE is not set)", todo


def _file_on_path(path: Path) -> Path | None:
    """The first component of ``path`` (from the root down) that exists but is not a folder."""
    for part in reversed((path, *path.parents)):
        if part.exists() and not part.is_dir():
            return part
    return None


def _ensure_writable_dir(folder: Path, cache_dir: str | os.PathLike | None = None) -> None:
    """Create ``folder`` (inside the model cache) and check that a file can be written there.

    A cache location that is a file, lies under a file, under ``/proc``, or is read-only
    would otherwise fail with a traceback deep inside a conversion; this names
    ``SVFCHECK_CACHE`` (or ``cache_dir``) and the path and says to point it elsewhere.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".svfcheck-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        origin, todo = _cache_origin(cache_dir)
        blocker = _file_on_path(folder)
        why = (f"{blocker} is a file, not a folder" if blocker is not None
               else f"cannot create or write {exc.filename or folder} ({exc.strerror or exc})")
        raise ModelLoadError(
            f"{origin}: cannot use {folder} for the model cache: {why}. Fix: {todo}."
        ) from exc


# --------------------------------------------------------------------------- locking / GGUF


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _step(progress: bool, msg: str) -> None:
    if progress:
        print(f"svfcheck: {msg}", flush=True)
    log.info(msg)


def _warn(msg: str) -> None:
    """Print ``msg`` to stderr whatever ``progress`` says (cache damage must not go unnoticed)."""
    print(f"svfcheck: {msg}", file=sys.stderr, flush=True)
    log.warning(msg)


def converted_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted folder of the offline GGUF model ``name`` lives (may not exist yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "converted" / f"{name}-v{_CONVERSION_FORMAT}"


def _remove_stale_tmp(parent: Path, prefix: str, progress: bool) -> None:
    """Delete leftovers named ``prefix*`` in ``parent`` (partial output of a killed conversion).

    Call only while holding the lock of that name: then nobody else is writing them.
    """
    try:
        leftovers = [p for p in parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for p in leftovers:
        _step(progress, f"removing {p}, left over by an interrupted conversion")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


# --------------------------------------------------------------------------- cache integrity

_MARKER = "svfcheck-conversion.json"
# path -> (stat key, sha256): a file is hashed at most once per process while unchanged
_HASH_MEMO: dict[str, tuple[tuple[int, ...], str]] = {}


def _hash_file(path: Path) -> str:
    """sha256 of the content of ``path`` (reads the whole file)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _file_sha256(path: Path) -> str:
    """sha256 of ``path``, memoized per (path, size, mtime_ns, ctime_ns, inode).

    Hashing a converted model's weights (hundreds of MB) takes a noticeable fraction of a
    second, so each file is hashed once per process. Any later rewrite changes ctime (which, unlike mtime,
    ``os.utime`` cannot restore) and a replaced file has a new inode, so the memo does not hide
    a change made after the hash (timestamps tick coarsely: not one within the same few ms).
    """
    st = path.stat()
    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    hit = _HASH_MEMO.get(str(path))
    if hit is not None and hit[0] == key:
        return hit[1]
    digest = _hash_file(path)
    _HASH_MEMO[str(path)] = (key, digest)
    return digest


def _move_memo(src: Path, dst: Path) -> None:
    """Re-key memoized hashes of files under folder ``src`` after it was renamed to ``dst``."""
    prefix = str(src) + os.sep
    for old in [k for k in _HASH_MEMO if k.startswith(prefix)]:
        _HASH_MEMO[str(dst / old[len(prefix):])] = _HASH_MEMO.pop(old)


def _folder_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file name: {"size", "sha256"}}`` of every file in ``folder`` except the marker."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": _file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != _MARKER
    }


def _write_marker(folder: Path, gguf_path: Path, seconds: float = 0.0) -> None:
    """Write the marker: the GGUF it came from and the size and sha256 of every file in ``folder``.

    Written last, so a marker also says the folder is complete.
    """
    info = {
        "gguf": str(gguf_path),
        "gguf_size": gguf_path.stat().st_size,
        "format": _CONVERSION_FORMAT,
        "seconds": seconds,
        "files": _folder_manifest(folder),
    }
    (folder / _MARKER).write_text(json.dumps(info, indent=1))


def _read_marker(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(marker contents, None) or (None, why the marker cannot be used)."""
    marker = folder / _MARKER
    if not marker.is_file():
        return None, f"it has no marker {_MARKER} (the conversion did not finish)"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        return None, f"its marker {marker} is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(info, dict):
        return None, f"its marker {marker} is not a JSON object"
    return info, None


def _manifest_problem(folder: Path, files: Any) -> str | None:
    """Why the files of ``folder`` do not match the recorded manifest ``files`` (None when they do).

    Sizes are compared first (cheap, catches truncation); then contents by sha256.
    """
    if not isinstance(files, dict) or not files:
        return "its marker records no file hashes (written by an older svfcheck, or damaged)"
    for name, rec in files.items():
        if (not isinstance(rec, dict) or Path(name).name != name or name in ("", ".", "..")
                or not isinstance(rec.get("size"), int) or not isinstance(rec.get("sha256"), str)):
            return f"its marker has a malformed entry {name!r}: {rec!r}"
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != rec["size"]:
            return f"{path} has {path.stat().st_size} bytes, {rec['size']} were recorded at conversion"
    for name, rec in files.items():
        if _file_sha256(folder / name) != rec["sha256"]:
            return f"{folder / name} does not match the sha256 recorded at conversion (its content changed)"
    return None


def _conversion_problem(target: Path, gguf_path: Path) -> str | None:
    """Why ``target`` is not a finished, intact conversion of ``gguf_path`` (None when it is)."""
    if not target.is_dir():
        return f"{target} does not exist"
    info, problem = _read_marker(target)
    if info is None:
        return problem
    size = gguf_path.stat().st_size
    if info.get("gguf_size") != size:
        return (f"it was converted from a GGUF file of {info.get('gguf_size')} bytes, but {gguf_path} "
                f"has {size} bytes (package upgraded?)")
    return _manifest_problem(target, info.get("files"))


def _conversion_current(target: Path, gguf_path: Path) -> bool:
    """True when ``target`` holds a finished conversion of this GGUF file whose files are intact."""
    return _conversion_problem(target, gguf_path) is None


def _dequantize_into(gguf_path: Path, folder: Path, bar) -> None:
    """Load ``gguf_path`` with transformers and save model and tokenizer as a normal folder.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so a fresh model is built
    from its config (without ``quantization_config``), given the dequantized state dict and saved.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src, fname = str(gguf_path.parent), gguf_path.name
    bar.set_postfix_str("tokenizer")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    bar.update()
    bar.set_postfix_str("dequantizing weights (slow, once)")
    gmodel = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.float32)
    bar.update()
    bar.set_postfix_str("rebuilding")
    cfg_dict = gmodel.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(gmodel.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):  # lm_head shares the embedding
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(
            f"converting {gguf_path}: state dict mismatch (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); the GGUF architecture is not supported"
        )
    del gmodel
    bar.update()
    bar.set_postfix_str("saving")
    fresh.save_pretrained(folder)
    tok.save_pretrained(folder)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` to ``target``, replacing an old or damaged ``target``.

    The old folder is first renamed aside (to a ``.tmp-`` name, so a later conversion removes it
    if we are killed) so readers never see a half-deleted ``target``.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is the user's
    old = None
    if target.exists():  # a conversion of a different GGUF file (package upgraded) or damaged
        old = target.with_name(f"{target.name}.tmp-old-{os.getpid()}")
        os.rename(target, old)
    os.rename(tmp, target)
    _move_memo(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_gguf(
    gguf_path: Path, target: Path, *, progress: bool = True
) -> Path:
    """Convert a GGUF file once into a normal folder at ``target`` (locked, atomic rename).

    Under the lock: return at once if ``target`` is an intact conversion (another process may
    have finished it while we waited); otherwise say why it is rebuilt (if it exists), remove
    leftovers of killed conversions, convert into a temporary folder, record the sha256 of every
    file in the marker (:func:`_write_marker`) and rename the folder into place.
    """
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f"{target.name}.lock"):
        problem = _conversion_problem(target, gguf_path)
        if problem is None:
            return target
        if target.exists():
            _warn(f"the cached conversion {target} failed its check: {problem}; "
                  f"rebuilding it from {gguf_path}")
        _remove_stale_tmp(target.parent, f"{target.name}.tmp-", progress)
        t0 = time.perf_counter()
        bar = tqdm(total=5, desc=f"converting {gguf_path.name}", disable=not progress)
        tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
        try:
            _dequantize_into(gguf_path, tmp, bar)
            _write_marker(tmp, gguf_path, seconds=time.perf_counter() - t0)
            bar.update()
            _swap_into_place(tmp, target)
            bar.update()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            bar.close()
        _step(progress, f"converted {gguf_path.name} -> {target} in {time.perf_counter() - t0:.1f} s")
    return target
