#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one prepared run for a lent GPU machine (see docs/benchmarks.md for the
# figures it produced). Each step has its own time limit, so a slow one cannot take the rest down; every step's
# output goes to $OUT/gpu_checks.log (or ./gpu-checks.log) and a one-line verdict per step to stdout.
#
#   bash scripts/gpu_checks.sh            # the default steps (about 8 minutes on one H200, estimated)
#   STEPS="gpu_tests cli" bash scripts/gpu_checks.sh
#
# Run from the repository root with torch, torchvision, timm, scikit-learn, click, safetensors and faiss importable
# (vggfeat itself is taken from the checkout through PYTHONPATH, so nothing needs installing). WHEELS=DIR installs
# the wheels in DIR (e.g. faiss-cpu where faiss is missing) into a private folder first.
set -u
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/gpu-checks}
mkdir -p "$out"
log=$out/gpu_checks.log
work=$(mktemp -d /tmp/vggfeat-gpu-checks.XXXXXX)
py=${PYTHON:-python3}
# also: suite (the whole default suite, which runs on the CPU there too; about 6 minutes on 16 cores)
steps=${STEPS:-"env gpu_tests cuda_tests cli bench_train bench_extract extract_steady bench_probe"}
export work py PYTHONUNBUFFERED=1 PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} VGGFEAT_OFFLINE=1
if [ -n "${WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" "$WHEELS"/*.whl \
    && export PYTHONPATH=$PYTHONPATH:$work/site
fi
mkdir -p "$work/bin"  # a `vggfeat` command for tests that call it, from the checkout
printf '#!/bin/sh\nexec %s -m vggfeat "$@"\n' "$(command -v "$py")" >"$work/bin/vggfeat"
chmod +x "$work/bin/vggfeat"
export PATH=$work/bin:$PATH

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log everything, print a verdict line
  local name=$1 limit=$2
  shift 2
  case " $steps " in *" $name "*) ;; *) return 0 ;; esac
  echo "===== $name (limit ${limit}s): $*" >>"$log"
  local t0=$SECONDS
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash that knows it
    timeout -k 10 "$limit" bash -c "$(declare -f "$1"); $1" >>"$log" 2>&1
  else
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  fi
  local rc=$?
  echo "===== $name rc=$rc in $((SECONDS - t0)) s" >>"$log"
  echo "$name: rc=$rc in $((SECONDS - t0)) s"
}

env_report() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" - <<'EOF'
import platform, torch, torchvision, sklearn, numpy
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "sklearn", sklearn.__version__, "numpy", numpy.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.get_device_name(0))
import faiss, timm
print("faiss", faiss.__version__, "gpus", getattr(faiss, "get_num_gpus", lambda: 0)(), "timm", timm.__version__)
EOF
}

cli_smoke() {  # the user's commands on CUDA: extract (one process, then torchrun over NCCL), demo, train smoke
  set -e
  cd "$work"
  "$py" - <<'EOF'
import torch, torchvision
from vggfeat.data.photos import VOC_SIZES, photo_jpegs
import os
photo_jpegs("imgs", int(os.environ.get("CLI_IMAGES", "48")), VOC_SIZES)
torch.manual_seed(0)
torch.save(torchvision.models.vgg16().state_dict(), "vgg16.pth")
EOF
  vggfeat extract --layer fc7 imgs/ --weights vgg16.pth -o one --batch-size 16
  "$py" -m torch.distributed.run --standalone --nproc-per-node 1 -m vggfeat extract --layer fc7 imgs/ \
    --weights vgg16.pth -o ddp --batch-size 16
  vggfeat extract --layer fc7 imgs/ --weights vgg16.pth -o cpu --device cpu --batch-size 4 --scales 256
  vggfeat extract --layer fc7 imgs/ --weights vgg16.pth -o gpu256 --batch-size 16 --scales 256
  "$py" - <<'EOF'
import numpy as np
from vggfeat.features.store import load_store
one, ddp = load_store("one"), load_store("ddp")
cpu, gpu = load_store("cpu"), load_store("gpu256")
a, b = np.asarray(one.features), np.asarray(ddp.features)
import torch
print("cuda available:", torch.cuda.is_available())
print("one process vs torchrun/NCCL: max abs", np.abs(a - b).max(), "same order", list(one.paths) == list(ddp.paths))
c, g = np.asarray(cpu.features), np.asarray(gpu.features)
cos = (c * g).sum(1)
print(f"Q=256 CPU fp32 vs CUDA bf16: max abs {np.abs(c - g).max():.4f}, lowest cosine {cos.min():.5f}")
assert np.abs(a - b).max() < 1e-2 and cos.min() > 0.99
EOF
  vggfeat demo --quick --out demo
  "$py" -m torch.distributed.run --standalone --nproc-per-node 1 -m vggfeat train smoke --out run \
    --data-root smoke-data --set optim.epochs=1
  test -s run/model.safetensors
  echo "cli smoke: every command finished"
}

# limits: about twice what each step took on an H200 (16 CPU cores); the whole run stays under 9 minutes
step env 30 env_report
step gpu_tests 60 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/
step cli 150 cli_smoke
step bench_train 150 "$py" scripts/bench_train.py --device cuda --batch 256 --steps 10 --images 48 --compile vgg_d
step cuda_tests 90 env VGGFEAT_TEST_CUDA=1 "$py" -m pytest -q -p no:cacheprovider -rf --tb=line \
  tests/test_features_extract.py tests/test_evaluate.py tests/test_features_store.py
step bench_extract 100 "$py" scripts/bench_extract.py --device cuda --images 256 --batch-size 32 --workers 12 --loader
# many images: shapes recur, so per-shape costs (cuDNN plans) are paid once; not measured yet (2026-12-04)
step extract_steady 120 "$py" scripts/bench_extract.py --device cuda --images 2048 --batch-size 32 --workers 12 \
  --skip-baseline
step bench_probe 60 bash -c "'$py' scripts/bench_probe.py --device cuda --skip-suite --skip-sklearn \
  && '$py' scripts/bench_probe.py --device cpu --skip-suite --skip-sklearn"
step suite ${SUITE_LIMIT:-200} "$py" -m pytest -q -p no:cacheprovider --durations=15 tests/
grep -E "^(=====|vggfeat|naive|ratio|dense|device|net |vgg_|sklearn|method|\|)|TFLOP|peak|passed|failed|error|Error" \
  "$log" | tail -n 80
rm -rf "$work"
