#!/usr/bin/env bash
# Download, on a machine with a package registry, the wheels the GPU machine lacks.
#
# The GPU machine's python3 (3.12) has torch (CUDA), transformers 5.17, accelerate,
# einops, jaxtyping, rich, typer, tqdm, safetensors, tokenizers (and numpy, pillow,
# pyyaml, huggingface-hub with them) but no transformer_lens. Importing TransformerLens
# 4.3 needs pandas (and its dateutil, six, tzdata) and `datasets`; `datasets` would
# bring pyarrow (55 MB, over what may travel), so run.sh uses the import-time stub in
# benchmarks/gpu/stubs instead (nothing of it is called). Versions: requirements.lock.
# Checked by installing exactly these into a venv with transformers 5.17 and the GPU
# machine's packages: the bridge imports and tests/test_attention_routing.py passes.
#
#   bash benchmarks/gpu/prepare_wheels.sh          # -> .whl/ (git-ignored, ~14 MB)
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${DEST:-.whl}  # PY_VERSION=3.11 DEST=... : a set for a local check of run.sh
PIP=${PIP:-.venv/bin/python -m pip}
WHEELS=(
  transformer-lens==4.3.0
  pandas==3.1.1
  python-dateutil==4.0.0
  six==1.17.0
  tzdata==2026.6
)
mkdir -p "$DEST"
$PIP download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${WHEELS[@]}"
ls -la "$DEST"
du -sh "$DEST"
