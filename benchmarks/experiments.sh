#!/usr/bin/env bash
# The comparison grids of docs/results.md, as run for the committed tables (16-core machine, CPU only:
# every training job is single-threaded, jobs run in parallel). Each experiment generates its zoo on
# first use into ZOOS/<kind> and writes runs.jsonl, runs.csv, results.md, results.csv, results.png.
#   OUT=outputs/experiments WORKERS=15 bash benchmarks/experiments.sh
set -u
OUT=${OUT:-outputs/experiments}
ZOOS=${ZOOS:-$OUT/zoos}
W=${WORKERS:-$(nproc)}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=""  # CPU jobs only
run() { timeout "$1" python3 -m qegraph.cli experiment "${@:2}" --workers "$W" || echo "experiment $2 stopped (exit $?)"; }
run 270 cnn_generalization --out "$OUT/cnn_generalization" --zoo "$ZOOS/cnn" --seeds 3 --epochs 12 --train-ks 2 4
run 100 inr_classification --out "$OUT/inr_classification" --zoo "$ZOOS/inr" --seeds 3 --train-ks
run 110 transformer_generalization --out "$OUT/transformer_generalization" --zoo "$ZOOS/transformer" --seeds 3 --epochs 10 --train-ks
