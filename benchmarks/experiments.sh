#!/usr/bin/env bash
# The comparison grids of docs/results.md, with the arguments used for the committed tables. Every
# training job is single-threaded; WORKERS jobs run in parallel (default: all cores). Each experiment
# generates its zoo on first use into ZOOS/<kind> and writes runs.jsonl, runs.csv, results.md,
# results.csv and results.png into OUT/<name>. Re-running resumes: finished jobs are skipped.
#   OUT=outputs/experiments WORKERS=2 bash benchmarks/experiments.sh
set -euo pipefail
OUT=${OUT:-outputs/experiments}
ZOOS=${ZOOS:-$OUT/zoos}
W=${WORKERS:-$(nproc)}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=""  # CPU jobs only
run() { python3 -m qegraph.cli experiment "$@" --workers "$W"; }
run cnn_generalization --out "$OUT/cnn_generalization" --zoo "$ZOOS/cnn" --seeds 3 --epochs 12 --train-ks 2 4
run epsilon_ablation --out "$OUT/epsilon_ablation" --zoo "$ZOOS/cnn" --seeds 3 --epochs 12 --train-ks
run inr_classification --out "$OUT/inr_classification" --zoo "$ZOOS/inr" --seeds 3 --train-ks
run inr_classification --out "$OUT/inr_classification" --zoo "$ZOOS/inr" --seeds 3 --train-ks 0 --models PermGMN FlatMLP StatNN
run transformer_generalization --out "$OUT/transformer_generalization" --zoo "$ZOOS/transformer" --seeds 3 --train-ks
