"""Compare evaluation runs side by side, with paired significance tests against a reference run.

    python -m medvl.compare outputs/eval/run_a outputs/eval/run_b --reference run_a
    python -m medvl.compare 'outputs/eval/*' --metrics exact_match,closed_accuracy
    python -m medvl.compare multirun/2025-01-01/12-00-00          # a sweep: one column per job
    python -m medvl.compare evals/gmai_* --metrics choice_accuracy   # model x task/department tables
    python -m medvl.compare outputs/eval/run_a outputs/eval/run_b --wandb [--wandb-project medvl]

Writes model_comparison_tables.md, model_comparison.csv, model_comparison.json, significance.md and
model_comparison.html (one offline page of it all) into --out (default: the sweep directory, else the runs'
common parent, else outputs/compare/<timestamp>). Runs evaluated on different data, or with a different
max_new_tokens, decoding or BERTScore model, are refused (--allow-mixed-settings compares them with the
differences marked); a different prompt is marked. argparse, not Hydra: the arguments are paths, not an
experiment. ``--wandb`` logs the comparison and significance tables and those files to W&B, offline without
an API key, in the group of the training runs or sweep the compared checkpoints come from.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medvl.config import ConfigError
from medvl.evaluation.compare import CompareError, compare, console_tables
from medvl.evaluation.metrics import MetricError
from medvl.evaluation.wandb_log import check_wandb, log_comparison
from medvl.tables import console as wide_console


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m medvl.compare", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="eval dirs, globs (quote them) or a multirun/sweep dir")
    parser.add_argument("--reference", default=None, help="reference run: a name or 0-based index (default: first)")
    parser.add_argument("--out", default=None, help="output directory")
    parser.add_argument("--metrics", default=None, help="comma-separated metrics to keep (default: all)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--allow-mixed-settings", action="store_true",
                        help="compare runs evaluated with different max_new_tokens, decoding or BERTScore model "
                             "(marked in the outputs) instead of refusing them")
    parser.add_argument("--wandb", action="store_true", help="log the comparison to W&B (offline without an API key)")
    parser.add_argument("--wandb-project", default="medvl", help="W&B project (default: medvl)")
    parser.add_argument("--wandb-group", default=None,
                        help="W&B group (default: the group of the training runs or sweep the runs evaluate)")
    args = parser.parse_args(argv)
    if args.n_boot < 1:
        parser.error(f"--n-boot must be positive, got {args.n_boot}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    medvl_log = logging.getLogger("medvl")
    if args.wandb and not medvl_log.handlers:  # its lines (offline, where the run went) on stderr with the warnings
        medvl_log.addHandler(logging.StreamHandler())
        medvl_log.setLevel(logging.INFO)
    try:
        wandb_plan = check_wandb("--wandb", args.wandb)  # online or not, decided before the bootstrap runs
        result = compare(args.paths, reference=args.reference, out_dir=args.out, metrics=metrics,
                         n_boot=args.n_boot, seed=args.seed, allow_mixed_settings=args.allow_mixed_settings)
    except (CompareError, MetricError, ConfigError) as error:  # MetricError: a metric without a direction;
        # ConfigError: WANDB_MODE=online with no route to the W&B server
        print(f"medvl: {error}", file=sys.stderr)
        return 2
    console = wide_console()
    for table in console_tables(result["table"], [run.name for run in result["runs"]], result["directions"],
                                result["significance"]):
        console.print(table)
    for setting, values in result["settings_differ"].items():
        shown = ", ".join(f"{name}={value}" for name, value in values.items())
        print(f"medvl: warning: runs were evaluated with different {setting}: {shown}", file=sys.stderr)
    for pair in result["significance"]:
        if pair["note"]:
            print(f"medvl: warning: {pair['run']} vs {pair['reference']}: {pair['note']}", file=sys.stderr)
    console.print(f"wrote {', '.join(path.name for path in result['paths'].values())} to {result['out_dir']}")
    if wandb_plan is not None:
        log_comparison(wandb_plan, result, project=args.wandb_project, group=args.wandb_group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
