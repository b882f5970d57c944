#!/usr/bin/env bash
# NPROC=8 bash launchers/multi_gpu.sh model=7b deepspeed=zero2
# One node, one rank per GPU (torchrun). The run directory is decided here, once, so every rank agrees on it;
# only rank 0 writes into it. Without deepspeed=... the ranks train with plain DDP.
set -euo pipefail
NPROC=${NPROC:-$("${PYTHON:-python}" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
RUN_DIR=${RUN_DIR:-outputs/train/$(date +%Y-%m-%d_%H-%M-%S-%N)}
exec torchrun --standalone --nproc_per_node "$NPROC" \
    -m medvl.train hydra.run.dir="$RUN_DIR" "$@"
