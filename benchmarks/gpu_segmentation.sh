#!/usr/bin/env bash
# Segmentation-mask QA at full resolution on one GPU: DRIVE (565x584) and CHASE_DB1 (999x960) resized to
# 512 px and cut into 128 px tiles (16 per image), the full-size MONAI members, 4 folds, 40 epochs,
# 5% and 10% planted errors, seeds 0-2. The CPU runs (benchmarks/segmentation.py defaults) are the same
# recipe at 256 px / 64 px tiles with the tiny members, 3 folds and the epochs of models/seg/recipe.py. Results: benchmarks/results/gpu/segmentation_*.json
#   bash benchmarks/gpu_segmentation.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/gpu
mkdir -p "$OUT"
for set in drive chase; do
  for rate in 0.05 0.1; do
    for seed in 0 1 2; do
      PYTHONPATH=$PWD "$PY" benchmarks/segmentation.py --set "$set" --rate "$rate" --seed "$seed" \
        --size 512 --tile 128 --folds 4 --epochs 40 --archs unet,segresnet,attentionunet \
        --device cuda --threads 8 --tag _gpu512 --out "$OUT/segmentation_${set}_${rate}_s${seed}.json"
    done
  done
done
