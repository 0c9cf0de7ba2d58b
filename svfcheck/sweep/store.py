"""Finished task results on disk: ``OUT/tasks/KIND/KEY.json``, one file per task, written
atomically (a temporary file in the same folder, then ``os.replace``), so a killed driver
leaves either the whole result or none. A file is trusted only when it parses and names the
key it is stored under; anything else is set aside as ``KEY.json.bad`` and recomputed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .tasks import Task

__all__ = ["ResultStore"]

FORMAT = "svfcheck-sweep-task/1"


class ResultStore:
    def __init__(self, out: Path):
        self.root = Path(out) / "tasks"

    def path(self, task: Task) -> Path:
        return self.root / task.kind / f"{task.key}.json"

    def get(self, task: Task) -> dict | None:
        """The stored result of ``task``, or None (not finished, or damaged: set aside)."""
        p = self.path(task)
        if not p.is_file():
            return None
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT or doc.get("key") != task.key or "result" not in doc:
                raise ValueError("not this task's result")
        except (OSError, ValueError):
            os.replace(p, p.with_name(p.name + ".bad"))
            return None
        return doc["result"]

    def put(self, task: Task, result: dict, seconds: float, attempts: int | None) -> None:
        p = self.path(task)
        p.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "key": task.key, "kind": task.kind, "label": task.label, "payload": task.payload,
               "seconds": round(seconds, 3), "attempts": attempts, "result": result}
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{task.key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
