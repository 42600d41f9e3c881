#!/usr/bin/env bash
# One call on a lent GPU machine (docs/detector.md, "Reproducing the tables"): the detector benchmark at full
# resolution on a whole data set -- 224 px, default members densenet121,resnet18,efficientnet-b0,
# crossfit K=3, 5% uniform flips. Seed 0 runs alone first; the remaining seeds then run side by side
# on the same GPU if the time left allows (each run is killed at the budget so the call still returns).
#
#   bash benchmarks/gpu_session.sh xray|mri OUT_DIR [BUDGET_S] [SEED ...]
#
# The machine is bare: MONAI, cleanlab and termcolor travel as wheels in .whl/, the images as
# .gpudata/classification/<data set>/ (a copy made with `jpegtran -grayscale -copy none -optimize`:
# the luminance is kept bit for bit, colour channels and metadata are dropped, so it fits the transfer
# limit). results/*.json, a log and work-<ds>.tar.gz (predictions.npz, samples.csv, plots) land in OUT_DIR.
set -u
ds=$1; out=$2; budget=${3:-540}
shift $(( $# >= 3 ? 3 : $# ))
seeds=("$@"); [ ${#seeds[@]} -eq 0 ] && seeds=(0 1 2)
start=$(date +%s)
mkdir -p "$out/results"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 LABELQA_SHARED_DATA=$PWD/.gpudata LABELQA_CACHE_DIR=/tmp/labelqa-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai, cleanlab; print('torch', torch.__version__, 'monai', monai.__version__, 'cleanlab', cleanlab.__version__, 'cuda', torch.cuda.is_available())" || exit 1
# SIZE, MAXN, EPOCHS, ARCHS, DEVICE override the defaults (a small CPU rehearsal of the script); REPEATS=2 fits
# each architecture with two seeds and averages them (results tagged -r2).
common=(--datasets "$ds" --max-samples "${MAXN:-0}" --image-size "${SIZE:-224}" --epochs "${EPOCHS:-15}" --folds 3
        --batch-size 64 --archs "${ARCHS:-densenet121,resnet18,efficientnet-b0}" --device "${DEVICE:-cuda}" --threads 4
        --runner models --repeats "${REPEATS:-1}"
        --work-dir /tmp/work --results-dir "$out/results")
left() { echo $(( budget - ($(date +%s) - start) )); }
t0=$(date +%s)
timeout "$(left)" python3 benchmarks/detector.py "${common[@]}" --seeds "${seeds[0]}"
t_first=$(( $(date +%s) - t0 ))
echo "seed ${seeds[0]}: ${t_first}s; $(left)s left"
rest=("${seeds[@]:1}")
if [ ${#rest[@]} -gt 0 ]; then
  if [ "$(left)" -ge $(( t_first * 14 / 10 )) ]; then run=("${rest[@]}")
  elif [ "$(left)" -ge $(( t_first * 105 / 100 )) ]; then run=("${rest[0]}")
  else run=(); fi
  pids=()
  for s in "${run[@]}"; do
    timeout "$(left)" python3 benchmarks/detector.py "${common[@]}" --seeds "$s" > "/tmp/work/seed$s.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for s in "${run[@]}"; do tail -n 25 "/tmp/work/seed$s.log"; done
fi
nvidia-smi --query-gpu=memory.used --format=csv,noheader
tar czf "$out/work-$ds.tar.gz" -C /tmp/work . 2>/dev/null
ls -la "$out" "$out/results"
echo "total $(( $(date +%s) - start ))s"
