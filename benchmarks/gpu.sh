#!/usr/bin/env bash
# The GPU figures of docs/performance.md and the checks of the CUDA paths, as one run on a GPU machine
# (torch, torchvision, timm, OpenCV, pandas, pyarrow, scikit-learn, PyYAML; no snakemake, mlflow or dlib):
#
#     bash benchmarks/gpu.sh FACES_PARQUET
#
# FACES_PARQUET: a faces file made on a CPU machine, 224 px crops (`make demo`'s
# results/faces/woman_sad_to_happy.parquet, 8.6 MB: carry it). Each step has its own time limit
# (about 8 minutes in all) and writes its full output to $OUT (default gpu_out/); each step's last
# line (its figure, or the checks' failure count) is printed here.
set -u
FACES=${1:?usage: bash benchmarks/gpu.sh FACES_PARQUET}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, timm, torchvision; print('torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - started)) s: $(tail -n 1 "$OUT/$name.log")"
}

# CUDA paths against the CPU paths (nvJPEG crops, features under bf16, training on device-decoded crops, fused LSTMs)
step checks 90 python benchmarks/gpu_checks.py "$FACES"
# feature stage vs the bare channels_last forward at batch 256 (target: ratio >= 0.8)
step features 120 python benchmarks/features.py "$FACES" --size 224 --batch 256 --loop 20 --workers 4
# training loop vs the bare channels_last train step at batch 32 (target: ratio >= 0.8)
step frame_model 120 python benchmarks/frame_model.py "$FACES" --size 224 --batch 32 --batches 60
# the reference grid's epochs on the GPU, 25 points together vs one alone, and the projected grid (target <= 15 min)
step sequence_grid 150 python benchmarks/sequence_grid.py --synthetic 50000 --device cuda
