"""``evaluate(cfg)``: generate answers, score them, and write per-category tables.

Predictions are appended to ``predictions.jsonl`` batch by batch; rerunning the same command
after an interruption skips every row already there, so nothing is recomputed or duplicated.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medvl.data.splits import load_split, resolve_image_root
from medvl.evaluation import ranks
from medvl.evaluation.generate import answer_chunks, iter_batches
from medvl.evaluation.html import image_index
from medvl.evaluation.perplexity import answer_nll
from medvl.evaluation.scoring import likelihood_fields, prediction_record, score
from medvl.models.loading import attention_of, load_run
from medvl.runs import CheckpointError, RunDir

log = logging.getLogger(__name__)

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


def load_for_eval(cfg: DictConfig, ckpt: RunDir | None, device: str | None = None):
    """(model, processor) for the base model or a checkpoint, on ``device`` (default: ``cfg.device``).
    An adapter comes merged into its base (merged weights generate faster and give the same outputs)."""
    device = eval_device(device or str(OmegaConf.select(cfg, "device", default="auto")))  # a train config has none
    return load_run(cfg.model, ckpt, **placement(device))


#: Fingerprint keys that only the scores depend on: every run re-scores all its rows, so a resumed run may
#: change them (the fingerprint is rewritten), and medvl.compare reads them to refuse unlike runs.
RESCORED = ("scoring",)
#: Keys later medvl versions added to the fingerprint: an eval directory written before them lacks them, and
#: resumes (its other keys still have to match).
ADDED_LATER = ("earlier_weights",)


def fingerprint(cfg: DictConfig, ckpt: RunDir | None, split: str) -> dict[str, Any]:
    """What the predictions and scores in an eval directory depend on (``eval_fingerprint.json``).

    Resuming requires an exact match outside :data:`RESCORED`. ``prompt``, ``generation`` and
    ``scoring`` are the evaluation settings that medvl.compare checks across runs.
    """
    from medvl.evaluation.generate import DECODING

    weights = init_from = None
    earlier: list[list[Any]] = []
    if ckpt is not None:
        init_from = ckpt.init_from  # the earlier stage's weights are part of this run's
        files = sorted(ckpt.path.glob("*.safetensors"))
        weights = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
        # The earlier stages' files too: one trained again in place changes this run's weights.
        earlier = [[str(stage.path), f.name, f.stat().st_size, int(f.stat().st_mtime)]
                   for stage in ckpt.weight_stages()[1:] for f in sorted(stage.path.glob("*.safetensors"))]
    return {"ckpt": str(ckpt.path) if ckpt else None, "weights": weights, "model": str(cfg.model.name_or_path),
            "data": str(cfg.data.dir), "split": split,
            "prompt": {"name": str(cfg.prompt.name), "system_prompt": cfg.prompt.system_prompt},
            "generation": {"max_new_tokens": int(cfg.max_new_tokens), **DECODING},
            "min_pixels": int(cfg.model.min_pixels), "max_pixels": int(cfg.model.max_pixels),
            "dtype": str(cfg.model.dtype), "attn_implementation": attention_of(cfg.model),  # the kernel used, not "auto"
            "init_from": str(init_from) if init_from else None,
            **({"earlier_weights": earlier} if earlier else {}),
            "scoring": {"bertscore": bertscore_setting(cfg)}}


def bertscore_setting(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.bertscore`` and, when BERTScore is scored, the layers it compares (``layer``; ``layer_zh`` with
    ``model_zh``) as resolved for these models: the same ``num_layers: null`` gives layer 17 for roberta-large
    and gave 24 for a local copy of it before medvl found its hub name, so medvl.compare reads the layer."""
    setting = OmegaConf.to_container(cfg.bertscore, resolve=True)
    if list(cfg.metrics) and "bertscore_f1" not in cfg.metrics:
        return setting
    from medvl.evaluation.metrics.bertscore import _bertscore_layers, default_bertscore_model

    setting["layer"] = _bertscore_layers(setting["model"] or default_bertscore_model(), setting["num_layers"])
    if setting.get("model_zh"):
        setting["layer_zh"] = _bertscore_layers(setting["model_zh"], None)
    return setting


def check_resumable(out: Path, fp: dict[str, Any]) -> None:
    """Refuse to mix predictions of a different setup into an existing eval directory."""
    path = out / "eval_fingerprint.json"
    stored = json.loads(json.dumps(fp))  # tuples -> lists, as they come back from disk
    # Predictions: the merged file, or the rank files a data-parallel run left when it stopped before merging.
    if path.exists() and ((out / "predictions.jsonl").exists() or any(out.glob("predictions.rank*.jsonl"))):
        old = json.loads(path.read_text())
        diff = ", ".join(k for k in stored if k not in RESCORED and old.get(k) != stored[k]
                         and not (k in ADDED_LATER and k not in old))
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
        # Each batch's images are processed once; on a GPU, in a background thread while the model works on the
        # batch before (answer_chunks).
        for chunk, preds, nlls in answer_chunks(model, processor, mine, cfg.data.root, system_prompt=system_prompt,
                                                max_new_tokens=cfg.max_new_tokens, perplexity=bool(cfg.perplexity)):
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


def fill_categories(rows: list[dict[str, Any]], categories: dict[str, str] | None = None) -> int:
    """Categorize rows that arrive without a category or answer type by the documented rules; return how many.

    Under the data's own taxonomy (``categories``) the rules cannot name its categories: a row without one gets
    its answer type only and is tabled as "uncategorized" (prepare rejects such evaluation rows).
    """
    from medvl.data.categorize import categorize, categorize_answer_type

    n = 0
    for row in rows:
        if row.get("category") and row.get("answer_type"):
            continue
        n += 1
        if categories is None:
            answer_type, category, _ = categorize(row)
            row["answer_type"] = row.get("answer_type") or answer_type
            row["category"] = row.get("category") or category
        elif not row.get("answer_type"):
            row["answer_type"] = categories.get(row.get("category") or "") or categorize_answer_type(row)[0]
    return n


def data_taxonomy(data_cfg: DictConfig, rows: list[dict[str, Any]]) -> dict[str, str] | None:
    """``data.categories`` checked, and the rows' categories against it, before any model loads (one line)."""
    from medvl.config import ConfigError
    from medvl.data.taxonomy import TaxonomyError, declared_taxonomy

    try:
        taxonomy = declared_taxonomy(data_cfg.get("categories"))
    except TaxonomyError as e:
        raise ConfigError(str(e)) from None
    undeclared = Counter(str(r["category"]) for r in rows if taxonomy and r.get("category")
                         and r["category"] not in taxonomy)
    if undeclared:
        listed = ", ".join(f"{name} ({n} rows)" for name, n in undeclared.most_common())
        raise ConfigError(f"data.categories does not declare {listed} of {data_cfg.dir}: declare them, or prepare "
                          f"the data again with this taxonomy")
    return taxonomy


def evaluate_one(cfg: DictConfig, ckpt: RunDir | None, out: Path, name: str) -> dict[str, Any]:
    from medvl.evaluation.report import write_reports

    out.mkdir(parents=True, exist_ok=True)
    split = cfg.split or cfg.data.eval_split
    rows = load_split(cfg.data, split, cfg.data.max_eval_samples)
    if not rows:
        from medvl.config import ConfigError  # medvl.eval prints it as one line

        raise ConfigError(f"data={cfg.data.name}: the {split} split at {cfg.data.dir} is empty")
    taxonomy = data_taxonomy(cfg.data, rows)
    n_filled = fill_categories(rows, taxonomy)
    if n_filled:
        log.warning("%d of %d rows had no category or answer type; %s", n_filled, len(rows),
                    "assigned by the question rules in docs/taxonomy.md" if taxonomy is None else
                    "answer types by those rules, categories uncategorized (data.categories names them)")
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
    write_reports(records, tables, out, images=image_index(rows, cfg.data.root))
    return tables


def evaluate(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Evaluate ``+ckpt`` (or the base model without it); with ``compare_base`` both, side by side.

    ``overrides`` are the command line's, so that they win over a run directory's own config.
    """
    from medvl.config import add_dataset_labels, validate_eval
    from medvl.evaluation.metrics import check_scoring
    from medvl.evaluation.report import print_side_by_side
    from medvl.evaluation.wandb_log import check_wandb, log_evaluation, wants_wandb

    validate_eval(cfg)
    check_scoring(cfg)  # metric names, Java, BERTScore model files: before hours of generation, not after
    # logger=wandb: the package, and online or offline, decided before the model loads (the run starts at the end).
    wandb_plan = check_wandb("logger=wandb", wants_wandb(cfg) and ranks.is_main())
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_arg = cfg.get("ckpt")
    ckpt = RunDir.from_ckpt(ckpt_arg) if ckpt_arg is not None else None
    if cfg.compare_base and ckpt is None:
        raise CheckpointError("compare_base=true compares the base model with a checkpoint: add +ckpt=<run dir>")
    if ckpt is not None:
        add_dataset_labels(ckpt.config)  # a run saved before data configs named their breakdowns
        ckpt.apply_config(cfg, list(overrides))
    resolve_image_root(cfg.data, required=False)  # without data.root, the folder prepare recorded for data.dir
    check_placement(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if ranks.is_main():
        (out / "eval_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if ckpt is None:
        results = {"base": evaluate_one(cfg, None, out, "base")}
    elif not cfg.compare_base:
        results = {"ckpt": evaluate_one(cfg, ckpt, out, ckpt.name)}
    else:
        results = {"base": evaluate_one(cfg, None, out / "base", "base"),
                   "ckpt": evaluate_one(cfg, ckpt, out / "ckpt", "fine-tuned")}
        if ranks.is_main():
            rows = load_split(cfg.data, cfg.split or cfg.data.eval_split, cfg.data.max_eval_samples)
            print_side_by_side(results, out, images=image_index(rows, cfg.data.root))
    if wandb_plan is not None:
        log_evaluation(wandb_plan, cfg, results, out, ckpt)
    return results


def check_placement(cfg: DictConfig) -> None:
    """``device=auto_shard`` spreads one model over all of a process's GPUs: one process, not one per rank."""
    world = ranks.rank_and_world()[1]
    if world > 1 and str(OmegaConf.select(cfg, "device", default="auto")) == "auto_shard":
        from medvl.config import ConfigError

        raise ConfigError(f"device=auto_shard spreads one model over all visible GPUs, but this is rank "
                          f"{ranks.rank_and_world()[0]} of {world}: run it as one process (python -m medvl.eval "
                          "device=auto_shard ...), or give each torchrun rank a whole model with device=auto")
