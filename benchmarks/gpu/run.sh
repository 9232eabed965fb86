#!/usr/bin/env bash
# The GPU benchmark in one short shot (one GPU, under 8 minutes end to end):
# LLaVA-1.5-7B-shaped model, all 32 layers, random weights, bf16; plain HF (sdpa) vs
# the bridge eager / routed, VAR eager / row-sparse, knock-out eager / SDPA mask;
# prefill (peak GPU memory above the weights, time) and generation (32 new tokens),
# batch 1 / 4 / 8. Writes benchmarks/gpu/results.json and benchmarks/gpu/RESULTS.md
# (rewritten after every case, so a timeout keeps what was measured).
#
# Needs: python3 with torch (CUDA) and transformers >= 5.9 (5.17 checked), and the
# wheels from benchmarks/gpu/prepare_wheels.sh in .whl/ when transformer_lens is
# missing (they are installed with --no-deps into $SITE, nothing system-wide).
#
#   bash benchmarks/gpu/run.sh                 # or: make bench-gpu
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.whl}
OUT_DIR=${OUT_DIR:-benchmarks/gpu}
WORKDIR=${WORKDIR:-/tmp}
LIMIT_S=${LIMIT_S:-470}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu DTYPE=float32 ... --quick: a code-path check without a GPU
DTYPE=${DTYPE:-bfloat16}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! $PY -c "import transformer_lens" 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no transformer_lens and no $WHEELS/*.whl: run benchmarks/gpu/prepare_wheels.sh where a registry is reachable" >&2; exit 2; }
  $PY -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
if ! $PY -c "import datasets" 2>/dev/null; then
  export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks/gpu/stubs"
fi
DEVICE=$DEVICE $PY - <<'PY'
import os, torch, transformers, transformer_lens  # noqa: F401
from importlib.metadata import version
cuda = os.environ["DEVICE"].startswith("cuda")
assert torch.cuda.is_available() or not cuda, "no CUDA device"
print("torch", torch.__version__, "| transformers", transformers.__version__,
      "| transformer-lens", version("transformer-lens"), "|",
      torch.cuda.get_device_name() if cuda else "cpu")
PY
mkdir -p "$OUT_DIR"
timeout "$LIMIT_S" $PY benchmarks/attention.py --device "$DEVICE" --dtype "$DTYPE" \
  --shapes llava7b:32 --batches 1,4,8 --repeats 2 --new-tokens 32 \
  --workdir "$WORKDIR" --out "$OUT_DIR/results.json" --md "$OUT_DIR/RESULTS.md" "$@"
cat "$OUT_DIR/RESULTS.md"
