#!/usr/bin/env bash
# The GPU path, checked: every model with one short step of each strategy it supports on CUDA, then the headline
# experiment (`make experiment`'s defaults) on CUDA; prints train / inference throughput and peak CUDA memory per model
# and fails on any tensor off the device, any CUDA error or a fall-back to the CPU. About 5 minutes on an H200.
#   bench/gpu_check.sh                           # the check (exit 0 passed, 1 failed, 2 no CUDA device)
#   bench/gpu_check.sh --device cpu --dry-run    # the script's own logic on a CPU machine (a few minutes)
# Other options go to bench/gpu_check.py (--models, --strategies, --batches, --json FILE, ...; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *" --device cpu "*|*" --device=cpu "*|*" -h "*|*" --help "*) ;;
  *) if ! ls /dev/nvidia0 >/dev/null 2>&1 && ! command -v nvidia-smi >/dev/null 2>&1; then
       echo "gpu_check: no CUDA device on this machine (no /dev/nvidia0, no nvidia-smi); run it on a GPU machine," \
            "or check the script itself with: bench/gpu_check.sh --device cpu --dry-run" >&2
       exit 2
     fi ;;
esac
make --no-print-directory venv   # creates or refreshes .venv as `make test` does; quiet when it is up to date
exec timeout --foreground "${GPU_CHECK_TIMEOUT:-900}" .venv/bin/python bench/gpu_check.py "$@"
