#!/usr/bin/env bash
# The GPU run of issue 16, as one prepared command (≤ 5 minutes on one H100/H200):
#
#   bash benchmarks/gpu.sh
#
# 1. setup: a virtual environment build/venv-gpu (QEGRAPH_GPU_VENV) with the system site packages, so a
#    CUDA build of PyTorch that the machine already has is used; `pip install torch==2.13.0` only
#    when the environment has no torch at all. Wheels in build/gpu-wheels (QEGRAPH_GPU_WHEELS) are
#    installed offline first: a machine without a package index needs the pure-Python packages its
#    image lacks (jsonargparse, docstring-parser, typeshed-client for LightningCLI), fetched elsewhere:
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform any \
#          -d build/gpu-wheels jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
#    qegraph itself is installed editable without dependencies.
# 2. env: prints torch.cuda.is_available() and the GPU's name; without CUDA it writes what it has
#    and exits with code 3.
# 3. tests: tests/test_cuda.py -m cuda (every CUDA test, the slow Lightning fits included).
# 4. metanet: benchmarks/metanet.py --device cuda (graphs/s on the GPU vs the same step on the CPU,
#    vs the dense baseline, peak GPU memory).
# 5. zoo: benchmarks/zoo.py --device cuda (2,000 CNN runs vectorized vs 8 one by one, same GPU).
# 6. quickstart: `qegraph fit --config configs/quickstart.yaml` with its zoo generated on the GPU, wall
#    time and test Kendall τ.
#
# Every stage has its own timeout (and none may run past the 5-minute budget, QEGRAPH_GPU_BUDGET
# seconds), and the results are written after every stage to benchmarks/results/gpu.json (atomically;
# keys device, tests_passed, metanet_speedup_vs_cpu, zoo_vectorized_speedup, quickstart_seconds,
# quickstart_tau, then details), logs to build/gpu-logs/ (git-ignored). Where $OUT is set (the device
# tool's output folder) the JSON files and logs are copied there as well. Exit code 0 when every stage
# passed, 1 when one failed, 3 without CUDA.
#
# Dry run on a machine without a GPU (proves the script end to end; never a GPU result):
#   QEGRAPH_GPU_DRYRUN=1 QEGRAPH_GPU_VENV=.venv bash benchmarks/gpu.sh
# forces the CPU (QEGRAPH_TEST_DEVICE=cpu for the tests), tiny sizes, and writes to a temporary folder
# (QEGRAPH_GPU_OUT_DIR) instead of benchmarks/results.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
DRY=${QEGRAPH_GPU_DRYRUN:-0}
# a dry run on a slow CPU gets 4× every stage's timeout and a 25-minute budget
BUDGET=${QEGRAPH_GPU_BUDGET:-$([ "$DRY" = 1 ] && echo 1500 || echo 300)}
SCALE=${QEGRAPH_GPU_TIME_SCALE:-$([ "$DRY" = 1 ] && echo 4 || echo 1)}
VENV=${QEGRAPH_GPU_VENV:-build/venv-gpu}
WHEELS=${QEGRAPH_GPU_WHEELS:-build/gpu-wheels}
SYS_PY=${QEGRAPH_GPU_PYTHON:-python3}
if [ "$DRY" = 1 ]; then
  RESULTS=${QEGRAPH_GPU_OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/qegraph-gpu-dryrun.XXXXXX")}
else
  RESULTS=${QEGRAPH_GPU_OUT_DIR:-$ROOT/benchmarks/results}
fi
LOGS=${QEGRAPH_GPU_LOG_DIR:-$([ "$DRY" = 1 ] && echo "$RESULTS/gpu-logs" || echo "$ROOT/build/gpu-logs")}
JSON=$RESULTS/gpu.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qegraph-gpu-work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$LOGS"
T0=$(date +%s)
export PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- helpers
# gpujson.load() / save(data): the results file, written atomically, NaN and inf stored as null
cat >"$WORK/gpujson.py" <<'EOF'
import json, math, os, sys

PATH = os.environ["QEGRAPH_GPU_JSON"]


def load():
    try:
        with open(PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def save(data):
    tmp = PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(data), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, PATH)


if __name__ == "__main__":  # KEY JSON_VALUE ...: set keys (dotted keys nest)
    data, args = load(), sys.argv[1:]
    for key, value in zip(args[0::2], args[1::2]):
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = json.loads(value)
    save(data)
EOF
export QEGRAPH_GPU_JSON=$JSON
jset() {  # jset KEY JSON_VALUE...
  local py=python3
  command -v python >/dev/null 2>&1 && py=python
  "$py" "$WORK/gpujson.py" "$@"
}

publish() {  # copy what there is to the device tool's output folder (at most 8 files come back)
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] || return 0
  cp -f "$JSON" "$OUT/gpu.json" 2>/dev/null
  for f in metanet_gpu.json zoo_gpu.json; do [ -f "$RESULTS/$f" ] && cp -f "$RESULTS/$f" "$OUT/$f"; done
  for f in tests metanet zoo quickstart setup; do [ -f "$LOGS/$f.log" ] && cp -f "$LOGS/$f.log" "$OUT/$f.log"; done
  return 0
}

FAILED=0
# stage NAME LIMIT_SECONDS COMMAND...: run with a timeout (never past the budget), log, record rc and time
stage() {
  local name=$1 limit=$(( $2 * SCALE ))
  shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -le 5 ]; then
    echo "== $name: skipped, the ${BUDGET} s budget is spent"
    jset "stages.$name" '{"status": "skipped: budget spent"}'
    FAILED=1
    return 124
  fi
  local cmd="$*"
  [ "${#cmd}" -gt 200 ] && cmd="${cmd:0:200}…"
  echo "== $name (timeout ${limit} s): $cmd"
  local s rc e
  s=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  e=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.1f", b - a }')
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timed out after ${limit} s"; elif [ "$rc" -ne 0 ]; then status="failed (exit $rc)"; fi
  [ "$rc" -ne 0 ] && FAILED=1
  echo "   $status in ${secs} s; last lines of $LOGS/$name.log:"
  tail -n 8 "$LOGS/$name.log" | sed 's/^/   | /'
  jset "stages.$name" "{\"status\": \"$status\", \"exit_code\": $rc, \"seconds\": $secs, \"log\": \"$LOGS/$name.log\"}"
  publish
  return "$rc"
}

# ---------------------------------------------------------------- 0. what the machine has, first
echo "== qegraph GPU run ($([ "$DRY" = 1 ] && echo 'DRY RUN on the CPU' || echo 'CUDA')), results in $JSON"
"$SYS_PY" -c "import torch; print('system python3: torch', torch.__version__, '| torch.cuda.is_available():', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')" 2>/dev/null \
  || echo "system python3 ($SYS_PY): no torch importable"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rm -f "$JSON"
jset dry_run "$([ "$DRY" = 1 ] && echo true || echo false)" device null tests_passed null metanet_speedup_vs_cpu null \
  zoo_vectorized_speedup null quickstart_seconds null quickstart_tau null complete false \
  started_at "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"" budget_seconds "$BUDGET"

# ---------------------------------------------------------------- 1. environment
setup_env() {
  set -e
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (system site packages visible)"
    "$SYS_PY" -m venv --system-site-packages "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip --version
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "installing the wheels of $WHEELS (offline)"
    python -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl
  fi
  if ! python -c "import torch" 2>/dev/null; then
    echo "no torch in the environment: pip install torch==2.13.0"
    python -m pip install --retries 1 --timeout 20 torch==2.13.0
  fi
  if python -c "import os, qegraph; assert os.path.dirname(os.path.dirname(os.path.abspath(qegraph.__file__))) == os.getcwd()" 2>/dev/null; then
    echo "qegraph already importable from $ROOT"
  else
    echo "pip install -e . (no dependencies, no build isolation: works offline)"
    python -m pip install -q --no-deps --no-build-isolation -e . \
      || { echo "editable install failed: using PYTHONPATH=$ROOT"; }
  fi
  python - <<'EOF'
import importlib, sys
missing = []
for name in ("torch", "torch_geometric", "lightning", "jsonargparse", "safetensors", "sklearn", "numpy", "yaml", "tqdm",
             "matplotlib", "networkx", "pytest"):
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{name} ({type(e).__name__}: {e})")
if missing:
    sys.exit("missing Python packages: " + "; ".join(missing))
import torch, lightning, torch_geometric
print("torch", torch.__version__, "| lightning", lightning.__version__, "| torch_geometric", torch_geometric.__version__)
EOF
}
stage setup 120 bash -c "$(declare -f setup_env); VENV='$VENV' WHEELS='$WHEELS' SYS_PY='$SYS_PY' ROOT='$ROOT' setup_env"
SETUP_RC=$?
# shellcheck disable=SC1091
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$SETUP_RC" -ne 0 ]; then
  echo "!! setup failed: see $LOGS/setup.log"
  jset error '"environment setup failed (see stages.setup.log)"'
  publish
  exit 1
fi

python - "$WORK" "$DRY" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import torch
from gpujson import load, save
dry = sys.argv[2] == "1"
ok = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if ok else None
print("torch", torch.__version__, "| torch.version.cuda", torch.version.cuda, "| torch.cuda.is_available():", ok,
      "| device:", name or "none")
data = load()
data.update({"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": ok,
             "device": name if ok and not dry else ("CPU (dry run)" if dry else None)})
if ok:
    p = torch.cuda.get_device_properties(0)
    data["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
                   "capability": f"{p.major}.{p.minor}"}
save(data)
EOF
CUDA_OK=$(python -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$DRY" != 1 ] && [ "$CUDA_OK" != 1 ]; then
  echo "!! torch.cuda.is_available() is False: this is not a GPU run. Results so far: $JSON"
  jset error '"CUDA is not available to torch on this machine; no GPU measurement was made"'
  publish
  exit 3
fi

if [ "$DRY" = 1 ]; then
  DEV=cpu; export QEGRAPH_TEST_DEVICE=cpu
  METANET_ARGS=(--quick --repeats 1)
  ZOO_ARGS=(--num-models 20 --baseline-models 2)
  QS_ZOO='{kind: cnn, num_models: 12, seed: 0, device: cpu}'
  QS_ARGS=(--trainer.max_epochs=2 --trainer.accelerator=cpu)
else
  DEV=cuda
  METANET_ARGS=(--repeats 5)
  ZOO_ARGS=(--num-models 2000 --baseline-models 8)
  QS_ZOO='{kind: cnn, num_models: 300, seed: 0, device: cuda}'
  QS_ARGS=()
fi
THREADS=$(nproc 2>/dev/null || echo 1)

# ---------------------------------------------------------------- 2. CUDA tests
stage tests 90 python -m pytest tests/test_cuda.py -m cuda -q -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning \
  --junitxml="$LOGS/tests.xml"
TESTS_RC=$?
python - "$WORK" "$LOGS/tests.xml" "$TESTS_RC" <<'EOF'
import sys
import xml.etree.ElementTree as ET
sys.path.insert(0, sys.argv[1])
from gpujson import load, save
xml_path, rc = sys.argv[2], int(sys.argv[3])
data = load()
try:
    suite = ET.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    n["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                         if c.find("failure") is not None or c.find("error") is not None]
except (OSError, ET.ParseError, AttributeError) as e:
    n = {"error": f"no test report ({e})"}
data["tests"] = n
data["tests_passed"] = rc == 0 and n.get("passed", 0) > 0 and n.get("skipped", 1) == 0
save(data)
print("tests:", n)
EOF
publish

# ---------------------------------------------------------------- 3. metanetwork speed and memory
stage metanet 75 python benchmarks/metanet.py --device "$DEV" --threads "$THREADS" "${METANET_ARGS[@]}" \
  --out "$RESULTS/metanet_gpu.json"
python - "$WORK" "$RESULTS/metanet_gpu.json" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[1])
from gpujson import load, save
src = sys.argv[2]
data = load()
try:
    with open(src) as f:
        m = json.load(f)
except (OSError, ValueError) as e:
    print("no metanet result:", e)
else:
    zoo, deep = m["zoo"], m["deep"]
    data["metanet_speedup_vs_cpu"] = m.get("speedup_vs_cpu")
    data["metanet"] = {
        "zoo_batch": f"{zoo['graphs']} CNN graphs, {zoo['nodes']} nodes, {zoo['edges']} edges, model {zoo['model']}",
        "quasi_graphs_per_s": zoo["graphs_per_s"]["section"], "strict_graphs_per_s": zoo["graphs_per_s"]["strict"],
        "alpha_beta_graphs_per_s": zoo["graphs_per_s"]["quasi"],
        "dense_graphs_per_s": zoo["graphs_per_s"]["dense"], "cpu_graphs_per_s": zoo.get("cpu_graphs_per_s"),
        "quasi_steps_per_s": 1 / zoo["step_s_median"]["section"],
        "section_step_vs_strict": m["section_step_vs_strict"],
        "cpu_steps_per_s": zoo["cpu_graphs_per_s"] / zoo["graphs"] if zoo.get("cpu_graphs_per_s") else None,
        "speedup_vs_dense": m["speedup_vs_dense"], "speedup_vs_dense_large": m["speedup_vs_dense_large"],
        "deep_peak_step_bytes": deep["peak_step_bytes"], "memory_ratio_vs_dense": m["memory_ratio_vs_dense"],
        "alpha_overhead": m["alpha_overhead"], "loader_to_step_ratio": m["loader_to_step_ratio"],
        "cpu_threads": m["machine"]["threads"], "result_file": src,
    }
save(data)
EOF
publish

# ---------------------------------------------------------------- 4. zoo generation, vectorized vs one by one
stage zoo 90 python benchmarks/zoo.py --device "$DEV" --skip-data "${ZOO_ARGS[@]}" --out "$RESULTS/zoo_gpu.json"
python - "$WORK" "$RESULTS/zoo_gpu.json" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[1])
from gpujson import load, save
src = sys.argv[2]
data = load()
try:
    with open(src) as f:
        z = json.load(f)
except (OSError, ValueError) as e:
    print("no zoo result:", e)
else:
    data["zoo_vectorized_speedup"] = round(z["vectorized_models_per_s"] / z["one_by_one_models_per_s"], 2)
    data["zoo"] = {k: z[k] for k in ("num_models", "models_at_once", "generation_seconds", "vectorized_models_per_s",
                                     "one_by_one_models", "one_by_one_models_per_s", "vectorized_gflops_per_s",
                                     "one_by_one_gflops_per_s", "dense_conv_gflops_per_s", "speedup_ceiling",
                                     "test_accuracy_std_final_step", "test_accuracy_final_min_median_max")}
    data["zoo"]["result_file"] = src
save(data)
EOF
publish

# ---------------------------------------------------------------- 5. the quickstart, end to end
stage quickstart 150 python -m qegraph.cli fit --config configs/quickstart.yaml \
  --data.init_args.zoo_dir="$WORK/zoo" --data.init_args.generate="$QS_ZOO" \
  --trainer.logger.init_args.save_dir="$WORK/outputs" --trainer.enable_progress_bar=false ${QS_ARGS[@]+"${QS_ARGS[@]}"}
QS_RC=$?
python - "$WORK" "$WORK/outputs" "$QS_RC" <<'EOF'
import csv, math, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from gpujson import load, save
logs, rc = Path(sys.argv[2]), int(sys.argv[3])
data = load()
tau = None
for metrics in sorted(logs.rglob("metrics.csv")):
    with open(metrics) as f:
        for row in csv.DictReader(f):
            if row.get("test/kendall_tau"):
                tau = float(row["test/kendall_tau"])
stage = data.get("stages", {}).get("quickstart", {})
if rc == 0:
    data["quickstart_seconds"] = stage.get("seconds")
data["quickstart_tau"] = None if tau is None or math.isnan(tau) else tau
data["quickstart"] = {"command": "qegraph fit --config configs/quickstart.yaml (zoo generated on the device, "
                                 "fresh folders; wall time includes zoo generation, graph conversion, "
                                 "20 epochs and the test of the best checkpoint)",
                      "test_kendall_tau": tau, "test_kendall_tau_is_nan": tau is not None and math.isnan(tau)}
save(data)
print("quickstart: tau", tau)
EOF

# ---------------------------------------------------------------- done
TOTAL=$(( $(date +%s) - T0 ))
jset total_seconds "$TOTAL" complete "$([ "$FAILED" = 0 ] && echo true || echo false)" \
  finished_at "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
publish
echo "== done in ${TOTAL} s ($([ "$FAILED" = 0 ] && echo 'every stage passed' || echo 'SOME STAGES FAILED')): $JSON"
python -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps({k: d.get(k) for k in ('device', 'tests_passed', 'metanet_speedup_vs_cpu', 'zoo_vectorized_speedup', 'quickstart_seconds', 'quickstart_tau')}, indent=1))" "$JSON"
exit "$FAILED"
