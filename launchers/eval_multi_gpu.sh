#!/usr/bin/env bash
# NPROC=8 bash launchers/eval_multi_gpu.sh +ckpt=outputs/train/<run> data=slake
# Data-parallel evaluation on one node: one rank per GPU, each with the whole model, predicting every N-th
# batch; rank 0 merges the predictions in the split's order and writes every output (rerunning resumes).
# A model larger than one GPU runs as one process instead: python -m medvl.eval device=auto_shard ...
set -euo pipefail
NPROC=${NPROC:-$("${PYTHON:-python}" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
exec torchrun --standalone --nproc_per_node "$NPROC" -m medvl.eval "$@"
