#!/usr/bin/env bash
# 3-D mask QA on one GPU, for volumes larger than the CPU runs' hippocampus crops: an MSD / nnU-Net CT organ
# set (e.g. Task09_Spleen or Task03_Liver: imagesTr/ + labelsTr/ + dataset.json), the full-size MONAI 3-D
# members, patches of 64 x 128 x 128 at the data set's median spacing (or --spacing), 5 folds, 5% and 10%
# planted errors, seeds 0-2. The 2-D slice-by-slice baseline is left out here (every 512 x 512 slice of every
# case in memory at once); run it on a subset with --max-cases and without --no-2d when it is wanted.
# Not run in the session that wrote it (no GPU was lent). Results: benchmarks/results/gpu/volume_*.json
#   DATA=/path/to/Task09_Spleen bash benchmarks/gpu_volume_segmentation.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:?set DATA to an MSD / nnU-Net volume set}
OUT=benchmarks/results/gpu
mkdir -p "$OUT" runs
name=$(basename "$DATA")
for rate in 0.05 0.1; do
  for seed in 0 1 2; do
    PYTHONPATH=$PWD "$PY" benchmarks/volume_segmentation.py --dataset "$DATA" --rate "$rate" --seed "$seed" \
      --archs unet3d,segresnet3d,attentionunet3d --patch 64,128,128 --batch-size 2 --folds 5 --epochs 300 \
      --no-2d --device cuda --threads 8 --run-dir "runs/${name}_${rate}_s${seed}" \
      --out "$OUT/volume_${name}_${rate}_s${seed}.json"
  done
done
