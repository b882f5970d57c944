"""``evaluate(cfg)``: generate answers, score them, and write per-category tables.

Predictions are appended to ``predictions.jsonl`` batch by batch; rerunning the same command
after an interruption skips every row already there, so nothing is recomputed or duplicated.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from medvl.data.splits import load_split, resolve_image_root
from medvl.evaluation import ranks
from medvl.evaluation.checkpoint import Checkpoint, CheckpointError, resolve_checkpoint
from medvl.evaluation.generate import generate_batch, iter_batches
from medvl.evaluation.perplexity import answer_nll
from medvl.evaluation.scoring import likelihood_fields, prediction_record, score
from medvl.models.loading import load_model, load_processor, resolve_model_path

log = logging.getLogger(__name__)

#: Config groups ``+ckpt=<run>`` evaluation takes from the run: the model and data it was trained on, and the
#: prompt it was trained with (a model tuned on "Answer with a single word" is scored with that prompt).
RUN_GROUPS = ("model", "data", "prompt")


def apply_run_config(cfg: DictConfig, ckpt: Checkpoint, overrides: list[str]) -> None:
    """Take model, data and prompt from the run the checkpoint came from, except what the command line sets.

    ``data=slake`` keeps the command line's whole data group; ``data.max_eval_samples=64`` keeps
    that one key on top of the run's data config.
    """
    if ckpt.run_config is None:
        return
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides if "=" in o]
    with open_dict(cfg):
        for group in RUN_GROUPS:
            if group in keys or group not in ckpt.run_config or group not in cfg:
                continue
            dotted = {k: OmegaConf.select(cfg, k) for k in keys if k.startswith(group + ".")}
            cfg[group] = OmegaConf.merge(cfg[group], ckpt.run_config[group])
            for key, value in dotted.items():
                OmegaConf.update(cfg, key, value)


def eval_device(device: str = "auto") -> str:
    """``auto``: this process's GPU (``cuda:$LOCAL_RANK``) when torch sees one, else ``cpu``.
    ``auto_shard`` stays as it is (see :func:`placement`)."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def placement(device: str) -> dict[str, str]:
    """``load_model``'s keyword for ``device``: ``auto_shard`` loads the layers spread over all visible GPUs
    (``device_map="auto"``: a model larger than one GPU), anything else moves the whole model there."""
    return {"device_map": "auto"} if device == "auto_shard" else {"device": device}


def load_for_eval(cfg: DictConfig, ckpt: Checkpoint | None, device: str | None = None):
    """(model, processor) for the base model or a checkpoint, on ``device`` (default: ``cfg.device``)."""
    device = eval_device(device or str(OmegaConf.select(cfg, "device", default="auto")))  # a train config has none
    place = placement(device)
    base = resolve_model_path(cfg.model)
    if ckpt is None:
        return load_model(cfg.model, base, **place), load_processor(cfg.model, base)
    if ckpt.kind == "model":
        return load_model(cfg.model, str(ckpt.path), **place), load_processor(cfg.model, str(ckpt.path))
    from peft import PeftModel

    _warn_if_other_base(ckpt, base)
    model = PeftModel.from_pretrained(_adapter_base(cfg, ckpt, base, place), str(ckpt.path))
    # Merged weights generate faster and give the same outputs.
    return model.merge_and_unload(), load_processor(cfg.model, base)


def _warn_if_other_base(ckpt: Checkpoint, base: str) -> None:
    """peft applies an adapter to any model whose module names match (a Qwen2-VL adapter to a Qwen2.5-VL
    model, silently): say so when the adapter records another base than the one it is put on."""
    recorded = json.loads((ckpt.path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not recorded or recorded == base:
        return
    if Path(recorded).exists() and Path(base).exists() and Path(recorded).resolve() == Path(base).resolve():
        return
    log.warning("The adapter in %s was trained on %s but is applied to %s; set model=... (or "
                "model.name_or_path=...) if that is not the same model", ckpt.path, recorded, base)


def _adapter_base(cfg: DictConfig, ckpt: Checkpoint, base: str, place: dict[str, str]):
    """The weights the adapter was trained on: the base model, with the earlier stage's weights when the
    run was trained on top of one (``init_from``), exactly as training built them."""
    init_from = _init_from(ckpt)
    if not init_from:
        return load_model(cfg.model, base, **place)
    init_dir = Path(init_from)
    if not init_dir.exists():
        raise CheckpointError(f"{ckpt.path} was trained on top of init_from={init_from}, which does not exist "
                              f"(relative paths are read from the current directory)")
    if (init_dir / "model" / "config.json").exists():  # the earlier stage saved a whole model
        return load_model(cfg.model, str(init_dir / "model"), **place)
    from medvl.models.lora import merge_init_from

    return merge_init_from(load_model(cfg.model, base, **place), init_dir)


#: Fingerprint keys that only the scores depend on: every run re-scores all its rows, so a resumed run may
#: change them (the fingerprint is rewritten), and medvl.compare reads them to refuse unlike runs.
RESCORED = ("scoring",)


def fingerprint(cfg: DictConfig, ckpt: Checkpoint | None, split: str) -> dict[str, Any]:
    """What the predictions and scores in an eval directory depend on (``eval_fingerprint.json``).

    Resuming requires an exact match outside :data:`RESCORED`. ``prompt``, ``generation`` and
    ``scoring`` are the evaluation settings that medvl.compare checks across runs.
    """
    from medvl.evaluation.generate import DECODING

    weights = None
    if ckpt is not None:
        files = sorted(ckpt.path.glob("*.safetensors"))
        weights = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return {"ckpt": str(ckpt.path) if ckpt else None, "weights": weights, "model": str(cfg.model.name_or_path),
            "data": str(cfg.data.dir), "split": split,
            "prompt": {"name": str(cfg.prompt.name), "system_prompt": cfg.prompt.system_prompt},
            "generation": {"max_new_tokens": int(cfg.max_new_tokens), **DECODING},
            "min_pixels": int(cfg.model.min_pixels), "max_pixels": int(cfg.model.max_pixels),
            "dtype": str(cfg.model.dtype), "attn_implementation": str(cfg.model.attn_implementation),
            "init_from": _init_from(ckpt),
            "scoring": {"bertscore": OmegaConf.to_container(cfg.bertscore, resolve=True)}}


def _init_from(ckpt: Checkpoint | None) -> str | None:
    """The earlier-stage run a checkpoint was trained on top of (part of its weights), if any."""
    if ckpt is None or ckpt.run_config is None:
        return None
    init_from = OmegaConf.select(ckpt.run_config, "init_from")
    return str(Path(init_from).resolve()) if init_from else None


def check_resumable(out: Path, fp: dict[str, Any]) -> None:
    """Refuse to mix predictions of a different setup into an existing eval directory."""
    path = out / "eval_fingerprint.json"
    stored = json.loads(json.dumps(fp))  # tuples -> lists, as they come back from disk
    if path.exists() and (out / "predictions.jsonl").exists():
        old = json.loads(path.read_text())
        diff = ", ".join(k for k in stored if k not in RESCORED and old.get(k) != stored[k])
        if diff:
            raise CheckpointError(f"{out} holds predictions of a different setup ({diff} changed); "
                                  f"delete it or pass hydra.run.dir=<new dir>")
    path.write_text(json.dumps(stored, indent=2))


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Rows already in ``predictions.jsonl``; a torn last line (killed mid-write) is dropped."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    good = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[rec["id"]] = rec
        good.append(line)
    if len(good) != len(lines):
        path.write_text("".join(g + "\n" for g in good), encoding="utf-8")
    return done


def rank_file(out: Path, rank: int) -> Path:
    """Where rank ``rank`` of a data-parallel evaluation appends its predictions."""
    return out / f"predictions.rank{rank}.jsonl"


def merge_rank_files(out: Path) -> None:
    """Fold the ranks' prediction files into ``predictions.jsonl`` (rank 0 only; a later record of a row wins)."""
    parts = sorted(out.glob("predictions.rank*.jsonl"))
    if not parts:
        return
    path = out / "predictions.jsonl"
    read_done(path)  # drops a torn last line before more lines follow it
    with open(path, "a", encoding="utf-8") as f:
        for part in parts:
            f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in read_done(part).values())
    for part in parts:
        part.unlink()


def predict(model, processor, rows: list[dict[str, Any]], cfg: DictConfig, out: Path) -> list[dict[str, Any]] | None:
    """Generate (and score perplexity) for every row not yet in ``out/predictions.jsonl``.

    In a data-parallel evaluation (see :mod:`medvl.evaluation.ranks`) each rank takes every N-th batch
    and rank 0 returns every row's record in ``rows`` order; the other ranks return None.
    """
    from rich.progress import Progress

    rank, world = ranks.rank_and_world()
    path = out / "predictions.jsonl"
    if rank == 0:
        merge_rank_files(out)  # an interrupted data-parallel run's predictions count as done
    ranks.barrier()
    done = read_done(path)
    selected = {r["id"] for r in rows}
    dropped = [i for i in done if i not in selected]
    if dropped:
        # Scoring the selection would rewrite predictions.jsonl without the other finished rows.
        raise CheckpointError(f"{out} holds {len(done)} predicted rows, {len(dropped)} of them outside this "
                              f"selection of {len(rows)} (data.max_eval_samples?); pass hydra.run.dir=<new dir> "
                              "to evaluate a subset")
    todo = [r for r in rows if r["id"] not in done]
    if done:
        log.info("Resuming: %d of %d rows already predicted in %s", len(rows) - len(todo), len(rows), path)
    system_prompt = cfg.prompt.system_prompt
    model.eval()
    sink = path if world == 1 else rank_file(out, rank)
    with open(sink, "a", encoding="utf-8") as f, Progress(transient=True, disable=rank != 0) as progress:
        if cfg.perplexity:
            # Rows predicted earlier with perplexity=false get their NLL now (the predictions stay), so that the
            # corpus perplexity covers every row; the updated record follows the old one in the file.
            missing = [r for r in rows if r["id"] in done and done[r["id"]].get("nll") is None]
            for chunk in list(iter_batches(missing, cfg.batch_size))[rank::world]:
                for row, (nll, n) in zip(chunk, answer_nll(model, processor, chunk, cfg.data.root,
                                                           system_prompt=system_prompt)):
                    rec = {**done[row["id"]], **likelihood_fields(nll, n)}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        # Whole batches per rank: each is the batch one process would form, so the predictions are the same.
        mine = list(iter_batches(todo, cfg.batch_size))[rank::world]
        task = progress.add_task("generating", total=sum(len(chunk) for chunk in mine))
        for chunk in mine:
            preds = generate_batch(model, processor, chunk, cfg.data.root, system_prompt=system_prompt,
                                   max_new_tokens=cfg.max_new_tokens)
            nlls = (answer_nll(model, processor, chunk, cfg.data.root, system_prompt=system_prompt)
                    if cfg.perplexity else [(None, 0)] * len(chunk))
            for row, pred, (nll, n) in zip(chunk, preds, nlls):
                f.write(json.dumps(prediction_record(row, pred, nll, n), ensure_ascii=False) + "\n")
            f.flush()
            progress.advance(task, len(chunk))
    ranks.barrier()
    if rank != 0:
        return None
    merge_rank_files(out)
    done = read_done(path)
    return [done[r["id"]] for r in rows]


def fill_categories(rows: list[dict[str, Any]]) -> int:
    """Categorize rows that arrive without a category by the documented rules; return how many."""
    from medvl.data.categorize import categorize

    n = 0
    for row in rows:
        if not row.get("category") or not row.get("answer_type"):
            answer_type, category, _ = categorize(row)
            row["answer_type"] = row.get("answer_type") or answer_type
            row["category"] = row.get("category") or category
            n += 1
    return n


def evaluate_one(cfg: DictConfig, ckpt: Checkpoint | None, out: Path, name: str) -> dict[str, Any]:
    from medvl.evaluation.report import write_reports

    out.mkdir(parents=True, exist_ok=True)
    split = cfg.split or cfg.data.eval_split
    rows = load_split(cfg.data, split, cfg.data.max_eval_samples)
    if not rows:
        from medvl.config import ConfigError  # medvl.eval prints it as one line

        raise ConfigError(f"data={cfg.data.name}: the {split} split at {cfg.data.dir} is empty")
    n_filled = fill_categories(rows)
    if n_filled:
        log.warning("%d of %d rows had no category; assigned by the question rules in docs/taxonomy.md",
                    n_filled, len(rows))
    if ranks.is_main():
        check_resumable(out, fingerprint(cfg, ckpt, split))
    model, processor = load_for_eval(cfg, ckpt)
    records = predict(model, processor, rows, cfg, out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # compare_base loads the next model next
    if records is None:  # another rank of a data-parallel evaluation: rank 0 scores and writes
        return {}
    tables = score(records, cfg, cfg.data.breakdowns, cfg.data.multi_label)
    tables["run"] = {"name": name, "ckpt": str(ckpt.path) if ckpt else None, "model": cfg.model.name_or_path,
                     "data": cfg.data.name, "split": split, "prompt": cfg.prompt.name,
                     "system_prompt": cfg.prompt.system_prompt}
    write_reports(records, tables, out)
    return tables


def evaluate(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Evaluate ``+ckpt`` (or the base model without it); with ``compare_base`` both, side by side.

    ``overrides`` are the command line's, so that they win over a run directory's own config.
    """
    from medvl.config import add_dataset_labels, validate_eval
    from medvl.evaluation.metrics import check_scoring
    from medvl.evaluation.report import print_side_by_side

    validate_eval(cfg)
    check_scoring(cfg)  # metric names, Java, BERTScore model files: before hours of generation, not after
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_arg = cfg.get("ckpt")
    ckpt = resolve_checkpoint(ckpt_arg) if ckpt_arg is not None else None
    if cfg.compare_base and ckpt is None:
        raise CheckpointError("compare_base=true compares the base model with a checkpoint: add +ckpt=<run dir>")
    if ckpt is not None:
        add_dataset_labels(ckpt.run_config)  # a run saved before data configs named their breakdowns
        apply_run_config(cfg, ckpt, list(overrides))
    resolve_image_root(cfg.data, required=False)  # without data.root, the folder prepare recorded for data.dir
    check_placement(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if ranks.is_main():
        (out / "eval_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if ckpt is None:
        return {"base": evaluate_one(cfg, None, out, "base")}
    if not cfg.compare_base:
        return {"ckpt": evaluate_one(cfg, ckpt, out, ckpt.path.parent.name if ckpt.path.name in (
            "adapter", "model") else ckpt.path.name)}
    results = {"base": evaluate_one(cfg, None, out / "base", "base"),
               "ckpt": evaluate_one(cfg, ckpt, out / "ckpt", "fine-tuned")}
    if ranks.is_main():
        print_side_by_side(results, out)
    return results


def check_placement(cfg: DictConfig) -> None:
    """``device=auto_shard`` spreads one model over all of a process's GPUs: one process, not one per rank."""
    world = ranks.rank_and_world()[1]
    if world > 1 and str(OmegaConf.select(cfg, "device", default="auto")) == "auto_shard":
        from medvl.config import ConfigError

        raise ConfigError(f"device=auto_shard spreads one model over all visible GPUs, but this is rank "
                          f"{ranks.rank_and_world()[0]} of {world}: run it as one process (python -m medvl.eval "
                          "device=auto_shard ...), or give each torchrun rank a whole model with device=auto")
