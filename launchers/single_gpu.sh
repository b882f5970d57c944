#!/usr/bin/env bash
# bash launchers/single_gpu.sh model=2b stage=instruct data=vqa_rad
# One process on one GPU (CUDA_VISIBLE_DEVICES picks which). RUN_DIR=... names the run directory.
set -euo pipefail
RUN_DIR=${RUN_DIR:-outputs/train/$(date +%Y-%m-%d_%H-%M-%S-%N)}
exec "${PYTHON:-python}" -m medvl.train hydra.run.dir="$RUN_DIR" "$@"
