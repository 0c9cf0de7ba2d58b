"""The sweep key of SAD over training: a hash of everything a per-step result depends on —
settings, head set, prompt ids, the checkpoints (content of their config and weight files, or
hub model and revision) and the tokenizer's vocabulary — so that a rerun over another series
or tokenizer in the same folder is refused rather than mixed (:func:`svfcheck.emergence.sweep.sweep`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .prompts import _Prompt
from .series import CheckpointSeries
from .settings import EMERGENCE_FORMAT, EmergenceSettings, HeadSet

__all__: list[str] = []


# files of a save_pretrained folder that determine the model (tokenizer files: see _tokenizer_fingerprint)
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _series_fingerprint(series: CheckpointSeries) -> dict:
    """The series' identity for the resume key: its name and, per step, the SHA-256 of each
    local checkpoint's ``config.json`` and weight files (content, not paths or mtimes: a copied
    or moved series still resumes, a retrained or edited one does not; hashing runs at ≈2 GB/s,
    a few ms for our runs' 1–2 MB checkpoints) or a hub checkpoint's model id and revision."""
    cks = []
    for c in series:
        if not c.is_local:
            cks.append({"step": c.step, "model": c.locator, "revision": c.revision})
            continue
        files = sorted(f for f in Path(c.locator).iterdir()
                       if f.is_file() and (f.name == "config.json" or f.suffix in _MODEL_FILE_SUFFIXES))
        cks.append({"step": c.step, "files": {f.name: _sha256_file(f) for f in files}})
    return {"name": series.name, "checkpoints": cks}


def _tokenizer_fingerprint(tokenizer) -> dict | None:
    """The tokenizer's class and a hash of its sorted vocabulary: the same prompt ids under
    another vocabulary are other prompts."""
    if tokenizer is None:
        return None
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return {"class": type(tokenizer).__name__, "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest()}


def _key(settings: EmergenceSettings, heads: HeadSet, prompts: list[_Prompt], series: CheckpointSeries,
         tokenizer) -> str:
    """The sweep key: a hash of everything a per-step result depends on — settings, heads,
    prompt ids, the checkpoints (:func:`_series_fingerprint`) and the tokenizer."""
    blob = json.dumps({"format": EMERGENCE_FORMAT, "settings": settings.to_dict(), "heads": heads.to_dict(),
                       "prompts": [list(p.ids) for p in prompts], "series": _series_fingerprint(series),
                       "tokenizer": _tokenizer_fingerprint(tokenizer)}, sort_keys=True)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:32]
