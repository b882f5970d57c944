"""``python -m medvl.prepare``: convert a dataset into unified rows and validate each row as training reads it.

For every split the converter's rows get a verdict from :mod:`medvl.data.checking` (the row checks, then
the token length with the configured model's processor, fast from image headers or ``full=true`` as
training builds the batch), in parallel processes; duplicate ids are settled afterwards in input order,
so the result does not depend on the number of workers. Outputs go to ``data.dir``: ``<split>.jsonl``,
``rejects.jsonl``, ``report.json`` (:mod:`medvl.data.prepare_report`), ``type_mapping.json`` and
``categories.md`` (docs/prepare.md).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from medvl.config.errors import to_log_file
from medvl.config.families import family_name
from medvl.data.checking import Checking, CheckSpec, RowChecker, Verdict
from medvl.data.converters import SPLITS, ConverterError, Reject, Row, convert, converter_for, partition
from medvl.data.format import read_jsonl
from medvl.data.prepare_report import (
    SplitResult,
    build_report,
    category_table,
    summary_table,
    type_entry,
)
from medvl.data.row_checks import make_duplicate_id_check
from medvl.data.splits import eval_split_names
from medvl.data.taxonomy import TaxonomyError, declared_taxonomy
from medvl.data.token_length import describe_max_length, max_image_tokens, resolve_max_length

log = logging.getLogger(__name__)


def converter_options(fmt: str, data_cfg: Any) -> dict[str, Any]:
    """Options from the data config that the converter takes: ``lang`` (Slake), ``source`` and ``columns``
    (``data=hf``) and ``data.options`` (e.g. ``+data.options.file=my_split.json`` or
    ``data.options={image_dir: imgs}``)."""
    params = inspect.signature(converter_for(fmt)).parameters
    options = {k: data_cfg[k] for k in ("lang", "source", "columns") if k in params}
    taxonomy = data_taxonomy(data_cfg)
    if taxonomy is not None:  # convert()'s own: it hands it to converters that read given labels
        options["categories"] = taxonomy
    extra = dict(data_cfg.get("options") or {})
    unknown = sorted(k for k in extra if k not in params)
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ConverterError(f"data.options {unknown} not accepted by the {fmt} converter; "
                         f"it takes: {', '.join(k for k in params if k not in ('root', 'split'))}")
    # Plain values: report.json records them, and a converter need not know OmegaConf (data.columns is a mapping).
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in {**options, **extra}.items()}


def data_taxonomy(data_cfg: Any) -> dict[str, str] | None:
    """``data.categories`` checked (:func:`medvl.data.taxonomy.declared_taxonomy`); a bad one is one line."""
    try:
        return declared_taxonomy(data_cfg.get("categories"))
    except TaxonomyError as e:
        raise ConverterError(str(e)) from None


def read_split(fmt: str, root: Path, split: str, options: dict[str, Any], *,
               required: bool) -> list[Row | Reject] | None:
    """The converter's items of one split; None when the dataset has no such split and it was not asked for."""
    try:
        return list(convert(fmt, root, split, **options))
    except FileNotFoundError:
        if required:
            raise
    except ValueError as e:
        if required or " has no " not in str(e):
            raise
    return None


def write_split(split: str, items: list[Row | Reject], verdicts: Iterable[Verdict], root: Path, kept_path: Path,
                rejects_file, type_mapping: dict[str, Any], *, scored: bool = False) -> SplitResult:
    """Write kept rows (to ``kept_path``) and rejects of a split in input order; duplicate ids are settled here,
    last. A ``scored`` split (evaluation, validation) keeps rows longer than max_length, counted in the
    report: generation and perplexity do not truncate, and a benchmark must not shrink."""
    result = SplitResult(split)
    duplicate = make_duplicate_id_check()
    verdicts = iter(verdicts)
    with open(kept_path, "w", encoding="utf-8") as kept_file:
        for k, item in enumerate(items):
            result.input += 1
            if isinstance(item, Reject):
                result.by_reason[item.reason] += 1
                # The same fields as a check reject; the id as the input file has it, where it has one.
                record = {"split": split, "source": item.source, "id": _input_id(item.raw), "reason": item.reason,
                          "message": item.message, "n_tokens": None, "raw": item.raw}
                rejects_file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                continue
            reason, message, n_tokens = next(verdicts)
            long_kept = scored and reason == "too_long"
            if long_kept:
                reason = None
            if reason is None:
                problem = duplicate(item, root)
                if problem is not None:
                    reason, message = problem.reason, problem.message
            if reason is not None:
                result.by_reason[reason] += 1
                row_id = item.get("id") if isinstance(item, dict) else None
                record = {"split": split, "source": f"{split}:item {k}", "id": row_id, "reason": reason,
                          "message": f"{row_id!r}: {message}", "n_tokens": n_tokens, "raw": item}
                rejects_file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                continue
            item["meta"] = {**(item.get("meta") or {}), "n_tokens": n_tokens}
            kept_file.write(json.dumps(item, ensure_ascii=False) + "\n")
            result.kept += 1
            result.lengths.append(n_tokens)
            result.categories[item.get("category")] += 1
            if long_kept:
                result.long_kept.append((item.get("id"), n_tokens))
            if scored:
                type_mapping.setdefault(split, {})[item["id"]] = type_entry(item, split)
    return result


def _input_id(raw: Any) -> Any:
    """A rejected input row's own id (``id``; Slake and VQA-RAD ``qid``; GMAI-MMBench ``index``), else None."""
    if isinstance(raw, dict):
        return next((raw[key] for key in ("id", "qid", "index") if raw.get(key) not in (None, "")), None)
    return None


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Convert and validate every split of ``cfg.data``; write the outputs and return the report."""
    from medvl.tables import console as wide_console

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console = wide_console()
    start = time.perf_counter()
    root, out_dir, options = _inputs(cfg.data)
    spec = _check_spec(cfg, root)
    # Loaded here too, so that a model that cannot load fails before any worker starts.
    checker = RowChecker(spec)
    # Every output is written next to its final name and moved into place only once the whole run has
    # succeeded, so a run that fails (a missing split, Ctrl-C, a full disk) leaves the previous outputs as
    # they were; records of splits this run does not process are carried over from them.
    staged = _Staged(out_dir)
    checking = Checking(spec, int(cfg.workers), checker)
    try:
        results, kept_over, type_mapping, check_seconds = _check_splits(cfg, root, options, checking, staged,
                                                                        console)
    except BaseException:
        staged.discard()
        raise
    finally:
        checking.close()

    splits = {s: r.summary() for s, r in results.items()}
    splits.update({s: summary for s, (summary, _) in kept_over.items()})
    splits = {s: splits[s] for s in sorted(splits, key=_split_order)}
    categories = {s: r.categories for s, r in results.items()} | {s: c for s, (_, c) in kept_over.items()}
    lengths = [n for r in results.values() for n in r.lengths]
    lengths += [n for s in kept_over for n in _kept_lengths(out_dir / f"{s}.jsonl")]
    seconds = {"check": round(check_seconds, 3), "total": round(time.perf_counter() - start, 3)}
    report = build_report(cfg, spec, options, splits, lengths, length_rule=describe_max_length(cfg.model, cfg.data),
                          max_image_tokens=max_image_tokens(cfg.model), seconds=seconds,
                          kept_over=sorted(kept_over, key=_split_order))
    _write_outputs(staged, report, type_mapping, {s: categories[s] for s in splits})
    console.print(summary_table(report))
    for line in report["warnings"]:
        console.print(f"[yellow]{escape(line)}[/yellow]", highlight=False)
        to_log_file(logging.WARNING, line, log.name)  # the console has it already
    log.info("Wrote %s", ", ".join(str(out_dir / f) for f in [*(f"{s}.jsonl" for s in splits), "rejects.jsonl",
                                                                 "report.json", "type_mapping.json", "categories.md"]))
    return report


def _inputs(data: Any) -> tuple[Path, Path, dict[str, Any]]:
    """The dataset folder, the output folder (created) and the converter's options, checked."""
    if OmegaConf.is_missing(data, "root"):
        raise ConverterError(f"data={data.name} needs the dataset folder: add data.root=<folder> to the command")
    root, out_dir = Path(data.root), Path(data.dir)
    options = converter_options(data.format, data)
    out_dir.mkdir(parents=True, exist_ok=True)  # first: data=hf's root is data.dir, where its images go
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root} is not a folder")
    return root, out_dir, options


def _check_spec(cfg: DictConfig, root: Path) -> CheckSpec:
    from medvl.models.loading import resolve_model_path

    data = cfg.data
    model_path = resolve_model_path(cfg.model)  # builds a tiny model once, before workers start
    max_length = resolve_max_length(cfg.model, data)
    log.info("Processor from %s (pixels %d..%d); max_length %d, %s; rows from %s (%s) -> %s", model_path,
             cfg.model.min_pixels, cfg.model.max_pixels, max_length, describe_max_length(cfg.model, data), root,
             data.format, Path(data.dir))
    return CheckSpec(model_path=model_path, min_pixels=int(cfg.model.min_pixels),
                     max_pixels=int(cfg.model.max_pixels), trust_remote_code=bool(cfg.model.trust_remote_code),
                     root=str(root), system_prompt=cfg.prompt.system_prompt, max_length=max_length,
                     full=bool(cfg.full), follow_symlinks=bool(data.follow_symlinks),
                     family=family_name(cfg.model.family),
                     categories=data_taxonomy(data))


def _check_splits(cfg: DictConfig, root: Path, options: dict[str, Any], checking: Checking, staged: _Staged,
                  console) -> tuple[dict[str, SplitResult], dict[str, tuple[dict[str, Any], Counter]],
                                    dict[str, Any], float]:
    """Check and write each requested split (all that exist by default) into ``staged``; carry over the
    records of the previous run's other splits. Returns the results, the carried-over splits, the type
    mapping and the seconds spent checking."""
    data = cfg.data
    requested = list(cfg.splits)
    scored_splits = eval_split_names(data)
    results: dict[str, SplitResult] = {}
    type_mapping: dict[str, Any] = {}
    check_seconds = 0.0
    with open(staged.path("rejects.jsonl"), "w", encoding="utf-8") as rejects_file, _progress(console) as progress:
        for split in requested or SPLITS:
            items = read_split(data.format, root, split, options, required=bool(requested))
            if items is None:
                log.info("%s: no %s split, skipped", data.name, split)
                continue
            rows, _ = partition(items)
            task = progress.add_task(f"{split} ({'full' if cfg.full else 'fast'})", total=len(rows))
            t0 = time.perf_counter()
            scored = split in scored_splits
            verdicts = checking.run(rows, scored, lambda n, t=task: progress.advance(t, n))
            check_seconds += time.perf_counter() - t0
            results[split] = write_split(split, items, verdicts, root, staged.path(f"{split}.jsonl"),
                                         rejects_file, type_mapping, scored=scored)
        if not results:
            raise FileNotFoundError(f"data={data.name}: no split of {SPLITS} found in {root}")
        kept_over = _previous_splits(staged.out_dir, results, rejects_file, type_mapping)
    return results, kept_over, type_mapping, check_seconds


def _write_outputs(staged: _Staged, report: dict[str, Any], type_mapping: dict[str, Any],
                   categories: dict[str, Counter]) -> None:
    """Write the report files into ``staged`` and move every staged output into place."""
    try:
        staged.path("report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        staged.path("type_mapping.json").write_text(json.dumps(type_mapping, indent=1, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
        staged.path("categories.md").write_text(
            f"# Categories of {report['data']['name']} (kept rows)\n\n"
            + category_table(categories, report["data"].get("categories")),
            encoding="utf-8")
    except BaseException:
        staged.discard()
        raise
    staged.commit()


class _Staged:
    """Output files written under temporary names in ``out_dir`` and renamed into place together."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self.files:
            self.files[name] = self.out_dir / f".{name}.{os.getpid()}.tmp"
        return self.files[name]

    def commit(self) -> None:
        # report.json last: while the renames run, it still describes the previous outputs.
        for name in sorted(self.files, key=lambda n: n == "report.json"):
            os.replace(self.files[name], self.out_dir / name)
        self.files.clear()

    def discard(self) -> None:
        for tmp in self.files.values():
            tmp.unlink(missing_ok=True)
        self.files.clear()


def _split_order(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def _kept_lengths(path: Path) -> list[int]:
    return [row["meta"]["n_tokens"] for row in read_jsonl(path)]


def _previous_splits(out_dir: Path, results: dict[str, SplitResult], rejects_file,
                     type_mapping: dict[str, Any]) -> dict[str, tuple[dict[str, Any], Counter]]:
    """Carry over the records of splits the previous run wrote and this one did not process.

    Their ``<split>.jsonl`` stays as it was, so their rejects, type_mapping entries, report counts and
    category counts stay too (appended to ``rejects_file`` / ``type_mapping``). Returns split -> (report
    entry, category counts of its kept rows).
    """
    try:
        previous = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    others = [s for s in previous if s not in results and (out_dir / f"{s}.jsonl").is_file()]
    if not others:
        return {}
    if (out_dir / "rejects.jsonl").is_file():
        with open(out_dir / "rejects.jsonl", encoding="utf-8") as f:
            for line in f:
                try:
                    keep = json.loads(line).get("split") in others
                except (ValueError, AttributeError):
                    keep = False
                if keep:
                    rejects_file.write(line if line.endswith("\n") else line + "\n")
    try:
        old_mapping = json.loads((out_dir / "type_mapping.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old_mapping = {}
    for split in others:  # {split: {id: entry}}; ids may repeat across splits (user data numbered 0..N each)
        if isinstance(old_mapping.get(split), dict):
            type_mapping[split] = old_mapping[split]
    out = {}
    for split in others:
        categories = Counter(row.get("category") for row in read_jsonl(out_dir / f"{split}.jsonl"))
        out[split] = (previous[split], categories)
        log.info("%s: not processed in this run; its records from the previous run are kept", split)
    return out


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("rows"), TimeElapsedColumn(), console=console)
