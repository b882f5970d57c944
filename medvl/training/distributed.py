"""Multi-process launches (torchrun, the deepspeed launcher, SLURM tasks): one run directory, rank-0 outputs.

Every rank starts Hydra itself, so everything Hydra decides must come out the same in every rank
without the ranks talking to each other (they cannot before Hydra has run):

- The run directory: the default ``outputs/train/${now:...}`` differs per rank, and a rendezvous id is
  no better (plain ``torchrun`` uses the id ``none`` for every run). So a multi-process run takes the
  directory from ``hydra.run.dir=`` (every script in ``launchers/`` passes one) or ``MEDVL_RUN_DIR``,
  and otherwise stops with one line saying so.
- Only rank 0 writes ``.hydra/`` and the log file: other ranks get ``hydra.output_subdir=null`` and a
  console-only log at WARNING.
- A sweep (``-m``) inside the ranks would run the whole sweep in every rank: it is refused; sweeps
  start outside the ranks (one launch per job, or ``hydra/launcher=slurm`` with one task per GPU).
- Under ``hydra/launcher=slurm`` there is no command line per rank: :class:`SubmititRanks` does the
  same from inside Hydra (the job's run dir is already shared, being fixed at submission).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

log = logging.getLogger(__name__)

#: Hydra overrides for ranks other than 0: no ``.hydra/``, no log file, errors only (rank 0 logs the warnings about
#: the config and data, which every rank would otherwise repeat: 8 times on an 8-GPU node).
REPLICA_OVERRIDES = ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.job_logging.root.level=ERROR"]

_MULTIRUN_FLAGS = ("-m", "--multirun")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0, the one that logs and writes."""
    return rank() == 0


def strip_local_rank(argv: list[str]) -> list[str]:
    """Remove the deepspeed launcher's ``--local_rank=N`` (Hydra rejects it) and export it as LOCAL_RANK."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in ("--local_rank", "--local-rank"):
            if not eq:  # `--local_rank N`
                i += 1
                value = argv[i] if i < len(argv) else ""
            os.environ["LOCAL_RANK"] = value
        else:
            out.append(arg)
        i += 1
    return out


def rank_argv(argv: list[str], *, run_dir_required: bool = True) -> list[str]:
    """This rank's command line for Hydra (``argv`` without the program name); exits with one line on misuse.

    ``run_dir_required=False`` (``medvl.eval``, whose default run directory has no timestamp and so is
    the same in every rank) accepts the default directory.
    """
    argv = strip_local_rank(argv)
    if world_size() <= 1:
        return argv
    if any(a in _MULTIRUN_FLAGS for a in argv):
        sys.exit("medvl: -m/--multirun cannot run inside torchrun/deepspeed (every rank would run the whole "
                 "sweep); start one launch per job, or sweep with `-m hydra/launcher=slurm` outside the ranks")
    run_dirs = [a.partition("=")[2] for a in argv if a.startswith("hydra.run.dir=")]
    if not run_dirs and (run_dir_required or os.environ.get("MEDVL_RUN_DIR")):
        run_dir = os.environ.get("MEDVL_RUN_DIR")
        if not run_dir:
            sys.exit(f"medvl: a {world_size()}-process run needs one run directory that every rank agrees on: "
                     "pass hydra.run.dir=DIR (the scripts in launchers/ do) or set MEDVL_RUN_DIR")
        argv = [*argv, f"hydra.run.dir={run_dir}"]
        run_dirs = [run_dir]
    if run_dirs and "${now:" in run_dirs[-1]:
        sys.exit(f"medvl: hydra.run.dir={run_dirs[-1]} differs between ranks (${{now:}} is read in each rank); "
                 "pass a literal directory, e.g. hydra.run.dir=outputs/train/$(date +%Y-%m-%d_%H-%M-%S)")
    if rank() != 0:
        # The rank's own choices for these keys would write files or fail as duplicate overrides.
        drop = ("hydra.output_subdir=", "hydra/job_logging=", "hydra.job_logging.")
        argv = [a for a in argv if not a.startswith(drop)] + REPLICA_OVERRIDES
    return argv


def one_gpu_without_launcher(args: Any) -> None:
    """Train on one GPU when a single process sees several (``python -m medvl.train`` on a multi-GPU node).

    The HF Trainer would wrap the model in ``nn.DataParallel`` there (``args.n_gpu > 1``), which cuts
    every tensor of a batch along dim 0: Qwen2-VL's ``pixel_values`` are the batch's image patches
    flattened into one tensor, so each replica would get patches that do not match its
    ``image_grid_thw`` rows. One GPU rather than a refusal: the same command keeps working everywhere,
    and a sweep (``-m``), which cannot run inside torchrun, runs its jobs one after another there.
    The warning names the launcher that uses all of them.
    """
    if world_size() > 1 or args.n_gpu <= 1:
        return
    n = args.n_gpu
    args._n_gpu = 1  # read by Trainer._wrap_model and train_batch_size; set before the Trainer exists
    overrides = " ".join(_task_overrides()) or "<overrides>"
    log.warning("%d GPUs visible to one process: training on %s only (the Trainer's nn.DataParallel would split "
                "Qwen2-VL's image patches from their grids); to train on all %d: NPROC=%d bash "
                "launchers/multi_gpu.sh %s (torchrun --standalone --nproc_per_node %d -m medvl.train "
                "hydra.run.dir=DIR ...); CUDA_VISIBLE_DEVICES=0 silences this", n, args.device, n, n, overrides, n)


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra.", "hydra/"))]


def task_rank() -> int:
    """This process's global rank: RANK once set, else the SLURM/submitit task's, else 0."""
    if "RANK" in os.environ:
        return rank()
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return submitit.JobEnvironment().global_rank
    return 0


def _on_rank0(value: Any, otherwise: Any = None) -> Any:
    return value if task_rank() == 0 else otherwise


# ``${medvl.rank0:A,B}``: A on rank 0, B on the other ranks.
OmegaConf.register_new_resolver("medvl.rank0", _on_rank0, replace=True)

#: Added to a submitit sweep's Hydra overrides: each task composes its own config from them.
TASK_OVERRIDES = ["hydra.output_subdir=${medvl.rank0:.hydra,null}"]


class SubmititRanks(Callback):
    """Each task of a multi-task submitit job (``hydra/launcher=slurm``) becomes a torch.distributed rank.

    Hydra writes ``.hydra/`` in every task before any medvl code runs there, from a config each task
    composes from the sweep's recorded overrides. ``on_multirun_start`` (at submission) adds
    ``TASK_OVERRIDES`` to them, so only rank 0 keeps ``.hydra/``; ``medvl.rank0`` exists in the task
    because unpickling this callback there imports this module. ``on_job_start`` (in the task, before
    training) exports RANK/WORLD_SIZE/MASTER_ADDR/... and leaves non-zero ranks a console log at WARNING.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        recorded = OmegaConf.to_container(config.hydra.overrides.hydra)  # unresolved, as the tasks read them
        with read_write(config.hydra.overrides):
            config.hydra.overrides.hydra.extend([o for o in TASK_OVERRIDES if o not in recorded])

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            return
        import submitit

        if submitit.JobEnvironment().num_tasks <= 1:
            return
        # Every task sees all of the node's GPUs (gpus_per_node); LOCAL_RANK picks its own.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if rank() != 0:
            root = logging.getLogger()
            for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
                root.removeHandler(handler)
                handler.close()
            root.setLevel(logging.WARNING)
