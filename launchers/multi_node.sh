#!/usr/bin/env bash
# NNODES=2 NODE_RANK=0 MASTER_ADDR=gpu-node-0 MASTER_PORT=29500 RUN_DIR=outputs/train/7b-zero3 bash launchers/multi_node.sh model=7b deepspeed=zero3
# Run the same command on every node (NODE_RANK=0..NNODES-1). RUN_DIR is required and must be on a shared
# filesystem: clocks differ between nodes, so a timestamp cannot name the run.
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}" "${RUN_DIR:?set RUN_DIR (shared by all nodes)}"
NPROC=${NPROC:-$("${PYTHON:-python}" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
    -m medvl.train hydra.run.dir="$RUN_DIR" "$@"
