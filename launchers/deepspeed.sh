#!/usr/bin/env bash
# NPROC=8 bash launchers/deepspeed.sh model=7b deepspeed=zero3
# The deepspeed launcher, one node. It passes --local_rank=N to each rank; medvl.train strips it (exporting
# LOCAL_RANK) before Hydra parses the command line. Name a ZeRO config with deepspeed=zero2|zero3|..._offload.
set -euo pipefail
NPROC=${NPROC:-$("${PYTHON:-python}" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
RUN_DIR=${RUN_DIR:-outputs/train/$(date +%Y-%m-%d_%H-%M-%S-%N)}
exec deepspeed --num_gpus "$NPROC" --master_port "${MASTER_PORT:-29500}" \
    --module medvl.train hydra.run.dir="$RUN_DIR" "$@"
