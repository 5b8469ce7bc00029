#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one prepared run for a lent GPU machine (see docs/benchmarks.md for the
# figures it produced). Each step has its own time limit, so a slow one cannot take the rest down; every step's
# output goes to $OUT/gpu_checks.log (or ./gpu-checks.log) and a one-line verdict per step to stdout.
#
#   bash scripts/gpu_checks.sh            # the default steps (about 13 minutes on one H100/H200, estimated)
#   STEPS="gpu_tests cli" bash scripts/gpu_checks.sh
#   STEPS=pace bash scripts/gpu_checks.sh   # extraction pace only (about 8 minutes, estimated; see below)
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
# extraction pace (planned batches): 2,048 VOC-sized JPEGs, VGG-16 fc7, 3 scales + flip, eager and --compile,
# with and without --gpu-decode; the target is >= 45% of the bf16 peak (about 500 images/s at 0.9 TFLOP each)
pace_steps="env pace_images pace_eager pace_eager_tuned pace_compile pace_gpu_decode pace_gpu_decode_compile pace_diff"
steps=${STEPS:-"env gpu_tests cuda_tests cli bench_extract $pace_steps bench_train bench_probe"}
[ "$steps" = pace ] && steps=$pace_steps
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
  vggfeat synthetic smoke-data
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
# pace: one set of 2,048 images for every variant; one store chunk holds them all (batches never span chunks), so
# the plan's recurring shapes fill whole batches. Each prints images/s, % of peak, distinct shapes, loader share
pace=(--device cuda --images 2048 --batch-size 32 --workers 12 --chunk-size 2048 --image-dir "$work/pace-imgs"
  --skip-baseline)
step pace_images 120 "$py" -c "from vggfeat.data.photos import photo_jpegs, VOC_SIZES
photo_jpegs('$work/pace-imgs', 2048, VOC_SIZES)"
step pace_eager 120 "$py" scripts/bench_extract.py "${pace[@]}" --save "$out/pace_eager.npy"
step pace_eager_tuned 120 "$py" scripts/bench_extract.py "${pace[@]}" --cudnn-benchmark on
step pace_compile 300 "$py" scripts/bench_extract.py "${pace[@]}" --cudnn-benchmark on --compile \
  --save "$out/pace_compile.npy"
step pace_gpu_decode 120 "$py" scripts/bench_extract.py "${pace[@]}" --gpu-decode --save "$out/pace_gpu_decode.npy"
step pace_gpu_decode_compile 300 "$py" scripts/bench_extract.py "${pace[@]}" --gpu-decode --cudnn-benchmark on \
  --compile
pace_diff() {  # the variants' descriptors against the exact eager run: compile is rounding, GPU decode other pixels
  "$py" - "$out" <<'EOF'
import sys, numpy as np
out = sys.argv[1]
ref = np.load(f"{out}/pace_eager.npy")
for name in ("pace_compile", "pace_gpu_decode"):
    try:
        x = np.load(f"{out}/{name}.npy")
    except OSError:
        print(f"{name}: no descriptors (its step failed or did not run)")
        continue
    cos = (ref * x).sum(1)
    print(f"{name} vs eager: max abs {np.abs(ref - x).max():.2e}, lowest cosine {cos.min():.6f}")
EOF
}
export out
step pace_diff 60 pace_diff
step bench_probe 60 bash -c "'$py' scripts/bench_probe.py --device cuda --skip-suite --skip-sklearn \
  && '$py' scripts/bench_probe.py --device cpu --skip-suite --skip-sklearn"
step suite ${SUITE_LIMIT:-200} "$py" -m pytest -q -p no:cacheprovider --durations=15 tests/
grep -E "^(=====|vggfeat|naive|ratio|dense|device|net |vgg_|sklearn|method|forward|loader|speed|pace|\|)|TFLOP|peak|passed|failed|error|Error" \
  "$log" | tail -n 80
rm -rf "$work"
