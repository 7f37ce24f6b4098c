#!/usr/bin/env bash
# The prepared GPU check of keras_edu (issue 18): steps/s of plain KD and of
# an ED run with two grade switches, in float32, mixed_float16 and
# mixed_bfloat16, on every backend that is installed; one table.
# Under 8 minutes on one GPU. On a CPU, pass --dry-run (tiny sizes).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--backends jax,torch] [--json PATH]
set -uo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
# JAX: take GPU memory as needed, so that a torch worker after it is not starved.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL=2
exec python3 benchmarks/gpu_check.py "$@"
