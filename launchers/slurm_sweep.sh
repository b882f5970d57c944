#!/usr/bin/env bash
# SBATCH_PARTITION=gpu GPUS=8 bash launchers/slurm_sweep.sh model=7b deepspeed=zero3 lora=attn,attn_ffn
# Submit one SLURM job per sweep point (hydra/launcher=slurm: one task = one rank per GPU) from a login node.
# The sweep directory is decided here; each job's run dir is <SWEEP_DIR>/<num>_<overrides>, the same in all its tasks.
set -euo pipefail
SWEEP_DIR=${SWEEP_DIR:-outputs/sweeps/$(date +%Y-%m-%d_%H-%M-%S-%N)}
exec "${PYTHON:-python}" -m medvl.train -m hydra/launcher=slurm hydra.launcher.gpus_per_node="${GPUS:-8}" \
    hydra.launcher.nodes="${NODES:-1}" hydra.sweep.dir="$SWEEP_DIR" "$@"
