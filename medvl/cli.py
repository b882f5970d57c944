"""``medvl train|eval|prepare|export|compare ...``: one command beside the ``python -m medvl.<command>`` modules.

    medvl train model=7b data=slake data.root=/data/Slake1.0     # = python -m medvl.train ...
    medvl train -m lora=attn,attn_ffn                            # a sweep, as with python -m medvl.train -m
    medvl eval +ckpt=outputs/train/<run> --cfg job
    torchrun --standalone --nproc_per_node 4 -m medvl train hydra.run.dir=outputs/train/run1

Each command runs its module's own start-up (``cli()`` of medvl.train, ..., ``main()`` of medvl.compare), so
the Hydra overrides and flags, the one-line errors and the rank handling under torchrun are the module's.
"""

from __future__ import annotations

import importlib
import sys

#: Command -> the module whose ``cli()`` (Hydra) or ``main(argv)`` (compare: argparse) runs it.
COMMANDS = {
    "train": "medvl.train",
    "eval": "medvl.eval",
    "prepare": "medvl.prepare",
    "export": "medvl.export",
    "compare": "medvl.compare",
}

USAGE = """usage: medvl {train,eval,prepare,export,compare} [ARGS ...]

  train    fine-tune a model (Hydra overrides, -m for a sweep; conf/train.yaml)
  eval     evaluate the base model or +ckpt=<run> (conf/eval.yaml)
  prepare  convert a dataset and check every row (conf/prepare.yaml)
  export   merge +ckpt=<run> into its base model (conf/export.yaml)
  compare  compare evaluation runs with confidence intervals (--help for its options)

The arguments are those of `python -m medvl.<command>`; `medvl <command> --help` shows them."""


def main(argv: list[str] | None = None) -> None:
    """Run ``medvl <command> ARGS``; ``argv`` defaults to the command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"medvl: unknown command {command!r}; commands: {', '.join(COMMANDS)} (medvl --help)")
    module = importlib.import_module(COMMANDS[command])
    if command == "compare":
        sys.exit(module.main(args))
    # Hydra reads the overrides from sys.argv; the program name is what its usage lines show.
    sys.argv = [f"medvl {command}", *args]
    module.cli()
