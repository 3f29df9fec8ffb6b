#!/usr/bin/env bash
# The prepared GPU check of issues 11 and 12, for a session lent a device machine (README.md here).
# On the device, from the repository root, with `.whl` and `out/focal_clustering_exact` carried:
#
#     bash benchmarks/gpu/run.sh                 # every stage, about 5-7 minutes on an H200
#     STAGES="tests focal" bash benchmarks/gpu/run.sh
#
# Stages: tests (the CUDA tests), focal (clustering: GPU brute force against the exact references),
# throughput (each baseline's training step at 299², batch 8, bf16), train (short real `bench train`
# runs of all five baselines on a small built set, then `bench eval` of FOCAL and MPC on the GPU).
# Each stage has its own time limit, so one that hangs does not eat the others' minutes.
# Here, on a CPU, `DEVICE=cpu SKIP_INSTALL=1 QUICK=1 PY=.venv/bin/python bash benchmarks/gpu/run.sh`
# runs the same commands at toy sizes, to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
STAGES=${STAGES:-tests focal throughput train}
WORK=${WORK:-/tmp/gpu-work}
QUICK=${QUICK:-0}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
exec > >(tee -a "$OUT/log.txt") 2>&1

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  echo "== install: the carried wheels into /tmp/site, and this checkout made importable (no build)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  "$PY" benchmarks/gpu/link_checkout.py /tmp/site || exit 1
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
BENCH=("$PY" -m dolos_bench.cli)

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"
"$PY" -c "import torch, os; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA', '|', os.cpu_count(), 'CPUs')"

stage() { [[ " $STAGES " == *" $1 "* ]]; }
limit() { local s=$1; shift; timeout --signal=INT "$s" "$@"; local rc=$?; [ $rc -eq 0 ] || echo "!! exit $rc: $*"; return $rc; }

if stage tests; then
  echo "== tests: CUDA paths (skipped on a CPU)"
  limit 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_focal_brute_force.py
fi

if stage focal; then
  echo "== focal: hdbscan-fast on $DEVICE against exact HDBSCAN (cached 256² references; 64² computed here)"
  sizes="64 256"; [ "$QUICK" = 1 ] && sizes="64"
  limit 240 "$PY" benchmarks/focal_clustering.py --device "$DEVICE" --sizes $sizes --channels 32 --images 1 \
    --noise 0.5 0.8 1.0 --modes 1 2 | tee "$OUT/focal_clustering.txt"
fi

if stage throughput; then
  echo "== throughput: one training step per baseline, bf16 autocast on CUDA"
  size=299; [ "$QUICK" = 1 ] && size=64
  limit 240 "$PY" benchmarks/train_throughput.py --device "$DEVICE" --size "$size" --batch 8 --steps 5 --warmup 2 \
    --threads 8 | tee "$OUT/train_throughput.txt"
fi

if stage train; then
  echo "== train: a small built set, then short bench train runs (images/s from each run's metrics.csv)"
  count=48; steps=40; [ "$QUICK" = 1 ] && { count=6; steps=2; }
  if ! limit 120 "${BENCH[@]}" build benchmarks/gpu/tiny-build.yaml --out "$WORK/ds" --overwrite --quiet --workers 8 \
      --set "sources.0.count=$count"; then
    echo "!! no dataset: the train stage stops here"; STAGES=${STAGES/train/}
  fi
fi
if stage train; then
  short=(--set epochs=1 --set "iterations_per_epoch=$steps" --set data.workers=4 --set data.validation_limit=16
         --set log_every=5 --device "$DEVICE" --quiet --overwrite)
  [ "$QUICK" = 1 ] && short+=(--set input_size=64 --set batch_size=2 --set validation.batch_size=2)
  run() {  # NAME RECIPE [extra args]: one short run, then its throughput line
    local name=$1 recipe=$2; shift 2
    local started=$SECONDS
    limit 150 "${BENCH[@]}" train "${name%%@*}" --data "$WORK/ds" --recipe "$recipe" --out "$WORK/runs/$name" "${short[@]}" "$@"
    "$PY" - "$WORK/runs/$name" "$name" $((SECONDS - started)) <<'PYEOF' | tee -a "$OUT/train_runs.txt"
import csv, json, sys
from pathlib import Path
run, name, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    rows = list(csv.reader((run / "metrics.csv").open()))[1:]
    rate = [float(v) for _, kind, key, v in rows if kind == "train" and key == "images_per_s"]
    loss = [float(v) for _, kind, key, v in rows if kind == "train" and key == "loss"]
    config = json.loads((run / "config.json").read_text())
    print(f"{name:<28} {config['status']:<9} steps {config.get('steps')}  images/s {rate[-1]:8.1f}  loss {loss[0]:.3f} -> {loss[-1]:.3f}"
          f"  device {config['device']} precision {config['precision']}  wall {seconds} s")
except Exception as exc:  # a failed run: say so and go on
    print(f"{name:<28} no result ({type(exc).__name__}: {exc})")
PYEOF
  }
  run patch-forensics recipes/train/patch-forensics-setup-c.yaml
  run gradcam@weak recipes/train/gradcam-setup-b.yaml
  run gradcam@full recipes/train/gradcam-setup-c.yaml
  run attention@weak recipes/train/attention-setup-b.yaml
  run focal recipes/train/focal-hrnet-256.yaml
  run mpc@1 recipes/train/mpc-stage1-256.yaml
  run mpc@2 recipes/train/mpc-stage2-256.yaml --set "pretrained=$WORK/runs/mpc@1"
  for model in focal mpc@2; do
    echo "-- bench eval ${model%%@*} on $DEVICE"
    limit 120 "${BENCH[@]}" eval "${model%%@*}" --weights "$WORK/runs/$model" --data "$WORK/ds" --split validation \
      --device "$DEVICE" --quiet --bootstrap 0 --out "$WORK/results/${model%%@*}.json"
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); t=r['provenance']['timings']; m=r['metrics']; print(sys.argv[2], 'pixel IoU', round(m['pixel/iou@0.5/mean-of-images/fakes']['value'],3), '| predict s', round(t['predict_s'],2), 'for', r['counts']['samples'], 'images |', r['info']['model_identity']['options'].get('device'))" \
      "$WORK/results/${model%%@*}.json" "${model%%@*}" 2>&1 | tee -a "$OUT/train_runs.txt"
  done
fi
echo "== done in ${SECONDS} s"
