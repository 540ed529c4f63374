#!/usr/bin/env bash
# The GPU evidence of issue 17, as ONE prepared run (about 5-8 minutes on one H100/H200-class GPU):
#   1. the machine and the environment (nvidia-smi, torch/CUDA, hf_spectral importable);
#   2. `--dry-run --device cuda` (calibrates the GPU's rates: GEMM, eigensolvers, batched speed-up);
#   3. `analyze --device cuda` of the GPT-2-small-shaped checkpoint, unbatched and batched, 3 interleaved
#      rounds each (whole-process wall), checked against a CPU snapshot (σ within 1e-4·σ₁);
#   4. with 2+ GPUs: `accelerate launch --multi_gpu --num_processes 2 -m hf_spectral analyze ...`;
#   5. the callback on a small GPT-2 for 100 steps on the GPU (benchmarks/callback_overhead.py --gpu);
#   6. benchmarks/batching.py --device cuda (batched vs one by one, per GPT-2 shape).
# Everything it prints goes to $OUT/gpu_check.log (or ./gpu_check.log); copy the numbers, with the machine,
# into benchmarks/README.md ("GPU check").
#
# usage: bash benchmarks/gpu_check.sh           (from the repository root; PYTHON=... to pick the interpreter)
# It needs torch with CUDA, transformers, accelerate, datasets, safetensors installed (no network is used).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=${OUT:-.}/gpu_check.log
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export HF_SPECTRAL_CACHE="$PWD/.benchmarks_out/module_cache"
exec > >(tee "$LOG") 2>&1
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
timed() { local t0=$(date +%s%N); "$@"; local rc=$?; echo "wall $(( ($(date +%s%N) - t0) / 1000000 )) ms (rc $rc): $*"; return $rc; }

step "1. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count()); sys.exit(0 if torch.cuda.is_available() else 3)" \
  || { echo "CUDA is not available to $PY: stop"; exit 3; }
$PY -c "import hf_spectral, transformers, accelerate, safetensors; print('hf_spectral', hf_spectral.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" || exit 4
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
CKPT=.benchmarks_out/gpt2-small
$PY -c "import sys; sys.path.insert(0, 'benchmarks'); import analyze; analyze.build_checkpoint()" || exit 5

step "2. dry run on cuda (calibrates the GPU once, then predicts)"
timed $PY -m hf_spectral analyze $CKPT --dry-run --device cuda --recalibrate | tail -4
timed $PY -m hf_spectral analyze $CKPT --dry-run --device cuda --processes 2 | tail -3

step "3. analyze on cuda, unbatched and batched, interleaved; and a CPU reference"
timed $PY -m hf_spectral analyze $CKPT --device cpu --output .benchmarks_out/gpu_check/cpu --no-progress | tail -1
for round in 1 2 3; do
  for mode in off on; do
    timed $PY -m hf_spectral analyze $CKPT --device cuda --batch $mode --output .benchmarks_out/gpu_check/cuda_$mode --no-progress | tail -1
  done
done
$PY - <<'PYEOF'
import numpy as np, hf_spectral
cpu = hf_spectral.read_snapshot(".benchmarks_out/gpu_check/cpu")
for mode in ("off", "on"):
    gpu = hf_spectral.read_snapshot(f".benchmarks_out/gpu_check/cuda_{mode}")
    worst = max(float(np.abs(gpu.spectra[n] - s).max() / s[0]) for n, s in cpu.spectra.items())
    print(f"cuda batch={mode}: {gpu.meta['seconds']} s of decompositions; max |σ_gpu − σ_cpu| / σ₁ = {worst:.2e}",
          "OK" if worst <= 1e-4 else "TOO FAR")
PYEOF

step "4. two processes (needs 2 GPUs)"
if [ "$GPUS" -ge 2 ]; then
  timed $PY -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
    --dynamo_backend no -m hf_spectral analyze $CKPT --output .benchmarks_out/gpu_check/two --no-progress | tail -1
else
  echo "skipped: $GPUS GPU(s)"
fi

step "5. SpectralCallback on a small GPT-2, 100 steps, GPU"
timed $PY benchmarks/callback_overhead.py --gpu --steps 100 --repeats 1 --json ${OUT:-.}/callback_gpu.json | tail -8

step "6. batched vs one by one per shape, GPU"
timed $PY benchmarks/batching.py --device cuda --repeats 3 --no-readme | tail -12
echo; echo "done; log in $LOG"
