#!/usr/bin/env bash
# GPU checks and measurements, as one prepared run on a lent CUDA machine (issues 10 and 18).
#
#   bash benchmarks/gpu.sh [OFFICIAL_DIR OFFICIAL_PYTHON]
#
# 1. Triton neurons against the reference loop (spikes identical, gradients close); lean mode
#    and spikes as bits identical to the default on CUDA (float64).
# 2. spikingresformer_s, 224 px, T=4, batch 32, bf16 autocast: images/s and
#    torch.cuda.max_memory_allocated for ours, default and lean (set_grad_checkpointing), and,
#    given a checkout and a Python with spikingjelly 0.0.0.0.14 (and CuPy for its cupy backend),
#    the official code.
# 3. The largest training batch each fits: ours default, ours lean, official.
# Results go to $OUT (the device tool's output folder) or ./gpu-results.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OFFICIAL=()
if [ $# -ge 2 ]; then OFFICIAL=(--official "$1" --official-python "$2" --official-precision bf16); fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" benchmarks/gpu_check.py triton | tee "$OUT/triton_check.txt"
"$PY" benchmarks/gpu_check.py lean | tee "$OUT/lean_check.txt"
"$PY" benchmarks/step.py --device cuda --model spikingresformer_s --img-size 224 --T 4 --batch-size 32 \
    --steps 10 --warmup 3 --configs triton:bf16,triton:bf16::eager:lean,triton:bf16::eager:bits,triton:bf16::compile \
    "${OFFICIAL[@]}" --json "$OUT/step_s224.json" | tee "$OUT/step_s224.txt"
for cfg in triton:bf16 triton:bf16::eager:lean; do
    "$PY" benchmarks/gpu_check.py max-batch --model spikingresformer_s --img-size 224 --T 4 --config "$cfg" \
        | tee -a "$OUT/max_batch_ours.txt"
done
if [ $# -ge 2 ]; then
    "$PY" benchmarks/gpu_check.py max-batch --model spikingresformer_s --img-size 224 --T 4 \
        --official "$1" --official-python "$2" | tee "$OUT/max_batch_official.txt"
fi
