"""``python -m medvl.prepare``: convert a dataset into unified rows and validate each row as training reads it.

For every split the converter's rows go through the processor-free row checks
(:func:`medvl.data.validate_rows.default_checks`) and then a length check with the configured model's
processor. Two paths measure the length and must agree on every row, verdict and token count:

- fast (default): image sizes come from the file header and the processor's resize rule
  (:func:`medvl.data.token_length.token_length`); no pixel is decoded and the image processor never runs.
  Whether an image decodes is judged from its header and its file structure (:func:`image_size`).
- full (``full=true``): the real ``VQADataset`` item and ``Collator`` batch, exactly what training runs.

Rows are checked in parallel processes; duplicate ids are settled afterwards in input order, so the
result does not depend on the number of workers. Outputs go to ``data.dir``: ``<split>.jsonl``,
``rejects.jsonl``, ``report.json``, ``type_mapping.json`` and ``categories.md`` (docs/prepare.md).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import multiprocessing
import os
import statistics
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

from omegaconf import DictConfig, OmegaConf
from PIL import Image

from medvl.data.converters import CONVERTERS, FILTER_REASONS, SPLITS, Reject, Row, convert
from medvl.data.dataset import Collator, VQADataset, to_messages
from medvl.data.format import image_paths, read_jsonl
from medvl.data.splits import eval_split_names
from medvl.data.taxonomy import CATEGORIES
from medvl.data.token_length import describe_max_length, max_image_tokens, resolve_max_length, token_length
from medvl.data.validate_rows import (
    Check,
    Problem,
    UnsupportedMode,
    default_checks,
    load_rgb,
    make_duplicate_id_check,
    no_pixel_limit,
    to_rgb,
)

log = logging.getLogger(__name__)

#: Row ``meta`` keys that hold a dataset's own labels; copied into type_mapping.json.
SOURCE_LABEL_KEYS = ("answer_type", "content_type", "question_type", "task", "label",
                     "heuristic_answer_type", "heuristic_question_type")

#: (reason or None, message, token length or None) for one row.
Verdict = tuple[str | None, str, int | None]


# --- fast image inspection -----------------------------------------------------------------


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image that :func:`load_rgb` would load, read without decoding pixels.

    JPEG and PNG files are trusted to decode when their structure is intact (JPEG: a baseline or
    progressive 8-bit frame and an end-of-image marker after the scan; PNG: every chunk's CRC right,
    IEND last) and their pixel mode converts to RGB. Anything else, a damaged file or another format,
    is decoded exactly as training would, so the verdict is the same as the full path's.

    Raises:
        UnsupportedMode: the pixel mode cannot be converted to RGB.
        Exception: whatever PIL raises for a file that does not open or decode.
    """
    with open(path, "rb") as f:
        with no_pixel_limit(), Image.open(f) as im:
            size, mode, fmt = im.size, im.mode, im.format
        f.seek(0)
        intact = (fmt == "JPEG" and _jpeg_intact(f)) or (fmt == "PNG" and _png_intact(f))
    if intact:
        _mode_converts(mode)
        return size
    load_rgb(path)
    return size


_SOF_TRUSTED = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive Huffman
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length field


def _jpeg_intact(f: BinaryIO, tail: int = 4096) -> bool:
    """Markers up to the first scan are well formed, the frame is 8-bit Huffman, and an EOI
    marker follows the scan. A cut-off JPEG (even by only its last two bytes) fails to decode in
    PIL and lacks that EOI; byte stuffing keeps ``FF D9`` out of the entropy-coded data."""
    if f.read(2) != b"\xff\xd8":
        return False
    sof = False
    while True:
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker code
            marker = f.read(1)
            if marker != b"\xff":
                break
        else:
            return False
        if not marker:
            return False
        code = marker[0]
        if code in _STANDALONE:
            continue
        head = f.read(2)
        if len(head) < 2:
            return False
        (length,) = struct.unpack(">H", head)
        if length < 2 or code in _SOF_OTHER:
            return False
        if code in _SOF_TRUSTED:
            if f.read(1) != b"\x08":  # sample precision
                return False
            sof = True
            f.seek(length - 3, os.SEEK_CUR)
        elif code == 0xDA:
            scan_start = f.tell() + length - 2
            break
        else:
            f.seek(length - 2, os.SEEK_CUR)
    if not sof:
        return False
    end = f.seek(0, os.SEEK_END)
    f.seek(max(scan_start, end - tail))
    return b"\xff\xd9" in f.read()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}
_ANIMATION_CHUNKS = {b"acTL", b"fcTL", b"fdAT"}


def _png_intact(f: BinaryIO) -> bool:
    """IHDR first, IDAT data, IEND last, every chunk's CRC right. PIL does not check the image
    data's CRCs while decoding, so a damaged IDAT is caught here and sent to a real decode. Text
    chunks after the image data (parsed only when decoding) and animations also go there."""
    data = f.read()
    if not data.startswith(_PNG_SIGNATURE):
        return False
    view = memoryview(data)
    pos, first, seen_idat, after_idat = 8, True, False, False
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            return False
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(view[pos + 4 : end]) != crc:
            return False
        if first and kind != b"IHDR":
            return False
        first = False
        if kind in _ANIMATION_CHUNKS or (after_idat and kind in _TEXT_CHUNKS):
            return False
        if kind == b"IDAT":
            seen_idat = True
        elif seen_idat:
            after_idat = True
        if kind == b"IEND":
            return seen_idat
        pos = end + 4
    return False


@functools.cache
def _mode_converts(mode: str) -> None:
    """Raise UnsupportedMode if :func:`to_rgb` cannot convert ``mode``; conversion support depends
    on the mode alone, so a 1x1 image of the mode stands in for the file (cached per mode)."""
    try:
        probe = Image.new(mode, (1, 1))
    except (ValueError, KeyError) as e:
        raise UnsupportedMode(f"mode {mode}: {e}") from e
    to_rgb(probe)


# --- per-row checks ------------------------------------------------------------------------


def check_template_images(row: Row, root: Path) -> Problem | None:
    """Images sit in human turns: the chat template drops ``<image>`` from answers, so a row whose
    placeholders add up only by counting its answers cannot be encoded."""
    n_template = sum(1 for m in to_messages(row, None) for c in m["content"] if c["type"] == "image")
    n_images = len(image_paths(row))
    if n_template != n_images:
        return Problem("placeholder_mismatch",
                       f"{n_template} <image> placeholder(s) in human turns for {n_images} image(s)")
    return None


def make_special_token_check(tokenizer) -> Check:
    """Text must not contain the model's special tokens: ``<|im_end|>`` in an answer would end the turn
    early, and a literal ``<|image_pad|>`` would be expanded as an image (or fail to be) by the processor."""
    specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special})

    def check_special_tokens(row: Row, root: Path) -> Problem | None:
        for k, turn in enumerate(row["conversations"]):
            found = [token for token in specials if token in turn["value"]]
            if found:
                return Problem("bad_value", f"turn {k} contains the model's special token(s) {', '.join(found)}")
        return None

    return check_special_tokens


def _image_problem(rel: str, exc: BaseException) -> Problem:
    if isinstance(exc, UnsupportedMode):
        return Problem("image_mode_unsupported", f"{rel!r}: {exc}")
    return Problem("image_unreadable", f"{rel!r}: {type(exc).__name__}: {exc}")


def _encode_problem(exc: BaseException) -> Problem:
    # No reason code fits a row the processor refuses for other causes (e.g. an image with an aspect
    # ratio above 200); bad_value is the nearest, and the message names the cause.
    return Problem("bad_value", f"cannot encode: {type(exc).__name__}: {exc}")


def _image_loading_frame(exc: BaseException):
    """The ``load_rgb`` frame an exception passed through, or None: in the full path an image fails
    inside ``VQADataset.__getitem__``, and only the traceback tells a bad image from other errors."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is load_rgb.__code__:
            return tb.tb_frame
        tb = tb.tb_next
    return None


@dataclass(frozen=True)
class CheckSpec:
    """What a worker needs to check rows: picklable, resolved values only."""

    model_path: str
    min_pixels: int
    max_pixels: int
    trust_remote_code: bool
    root: str
    system_prompt: str | None
    max_length: int
    full: bool
    follow_symlinks: bool = False


class RowChecker:
    """Verdicts on rows, one process's worth: the processor is loaded once."""

    def __init__(self, spec: CheckSpec, processor=None):
        from medvl.models.loading import load_processor

        self.spec = spec
        self.root = Path(spec.root)
        model = SimpleNamespace(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
                                trust_remote_code=spec.trust_remote_code)
        self.processor = processor or load_processor(model, spec.model_path)
        self._checks: dict[bool, list[Check]] = {}
        # Datasets ask several questions per image; a file is inspected once per run and process.
        self._sizes: dict[Path, tuple[int, int]] = {}

    def checks(self, require_category: bool) -> list[Check]:
        """The row checks without the duplicate-id check, which runs in input order in the main process."""
        if require_category not in self._checks:
            checks = default_checks(require_category=require_category, decode_images=False,
                                    follow_symlinks=self.spec.follow_symlinks)[:-1]
            self._checks[require_category] = [*checks, check_template_images,
                                               make_special_token_check(self.processor.tokenizer)]
        return self._checks[require_category]

    def verdict(self, row: Any, require_category: bool) -> Verdict:
        if not isinstance(row, dict):
            return "malformed_row", f"expected an object, got {type(row).__name__}", None
        for check in self.checks(require_category):
            try:
                problem = check(row, self.root)
            except Exception as exc:  # noqa: BLE001 - one bad row never stops the run
                problem = Problem("bad_value", f"check {getattr(check, '__name__', check)} failed: "
                                  f"{type(exc).__name__}: {exc}")
            if problem is not None:
                return problem.reason, problem.message, None
        problem, n_tokens = self.measure_full(row) if self.spec.full else self.measure_fast(row)
        if problem is None and n_tokens > self.spec.max_length:
            problem = Problem("too_long", f"{n_tokens} tokens > data.max_length={self.spec.max_length}")
        return (problem.reason if problem else None), (problem.message if problem else ""), n_tokens

    def measure_fast(self, row: Row) -> tuple[Problem | None, int | None]:
        sizes = []
        for rel in image_paths(row):
            path = self.root / rel
            try:
                if path not in self._sizes:
                    self._sizes[path] = image_size(path)
            except Exception as exc:  # noqa: BLE001
                return _image_problem(rel, exc), None
            sizes.append(self._sizes[path])
        try:
            return None, token_length(row, self.processor, self.root,
                                      system_prompt=self.spec.system_prompt, sizes=sizes)
        except Exception as exc:  # noqa: BLE001
            return _encode_problem(exc), None

    def measure_full(self, row: Row) -> tuple[Problem | None, int | None]:
        # As training builds them; max_length is applied by the caller, with the dataset's own rule
        # (longer than max_length fails), so that a too-long row still reports its length.
        dataset = VQADataset([row], self.processor, self.root, system_prompt=self.spec.system_prompt)
        try:
            batch = Collator(self.processor.tokenizer.pad_token_id)([dataset[0]])
        except Exception as exc:  # noqa: BLE001
            frame = _image_loading_frame(exc)
            if frame is None:
                return _encode_problem(exc), None
            path = Path(frame.f_locals.get("path", "?"))
            rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
            return _image_problem(rel, exc), None
        return None, int(batch["attention_mask"].sum())

    def check_chunk(self, rows: list[Any], require_category: bool) -> list[Verdict]:
        return [self.verdict(row, require_category) for row in rows]


_WORKER: RowChecker | None = None
#: The main process's checker; forked workers reuse its processor instead of loading their own.
_PARENT: RowChecker | None = None


def _init_worker(spec: CheckSpec) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)  # one process per core already
    inherited = _PARENT is not None and _PARENT.spec == spec
    _WORKER = RowChecker(spec, _PARENT.processor if inherited else None)


def _check_chunk(rows: list[Any], require_category: bool) -> list[Verdict]:
    assert _WORKER is not None
    return _WORKER.check_chunk(rows, require_category)


class _InlineExecutor(Executor):
    """``workers <= 1``: check in this process (debuggers, profilers), same code path."""

    def __init__(self, checker: RowChecker):
        self.checker = checker

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(self.checker.check_chunk(*args))
        return future


def _pool(spec: CheckSpec, workers: int) -> ProcessPoolExecutor:
    # fork on Linux: workers start in milliseconds instead of re-importing torch and transformers.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init_worker, initargs=(spec,))


class Checking:
    """Runs verdicts over processes. If a worker dies (a native crash in an image library, the OOM
    killer), the pool is rebuilt and the chunk it was on is re-checked alone, then row by row, so
    only the row that kills a worker is rejected and the run goes on."""

    def __init__(self, spec: CheckSpec, workers: int, checker: RowChecker):
        global _PARENT
        _PARENT = checker
        self.spec, self.workers = spec, workers
        self.executor: Executor = _InlineExecutor(checker) if workers <= 1 else _pool(spec, workers)
        self.broken = False

    def run(self, rows: list[Any], require_category: bool, advance: Callable[[int], None]) -> list[Verdict]:
        size = max(1, min(64, math.ceil(len(rows) / (max(1, self.workers) * 8))))
        chunks = [rows[s : s + size] for s in range(0, len(rows), size)]
        futures = [self.executor.submit(_check_chunk, c, require_category) for c in chunks]
        verdicts: list[Verdict] = []
        for i, chunk in enumerate(chunks):
            try:
                verdicts += futures[i].result()
            except BrokenProcessPool:
                self.broken = True
                verdicts += self._alone(chunk, require_category)
                futures[i + 1 :] = [self.executor.submit(_check_chunk, c, require_category) for c in chunks[i + 1 :]]
            advance(len(chunk))
        return verdicts

    def _submit_fresh(self, rows: list[Any], require_category: bool) -> list[Verdict]:
        if self.broken:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor, self.broken = _pool(self.spec, self.workers), False
        try:
            return self.executor.submit(_check_chunk, rows, require_category).result()
        except BrokenProcessPool:
            self.broken = True
            raise

    def _alone(self, chunk: list[Any], require_category: bool) -> list[Verdict]:
        try:
            return self._submit_fresh(chunk, require_category)
        except BrokenProcessPool:
            pass
        out: list[Verdict] = []
        for row in chunk:
            try:
                out += self._submit_fresh([row], require_category)
            except BrokenProcessPool:
                out.append(("bad_value", "the worker process died while checking this row", None))
        self._submit_fresh([], require_category)  # leave a working pool for the next chunks
        return out

    def close(self) -> None:
        global _PARENT
        self.executor.shutdown()
        _PARENT = None


# --- the command ---------------------------------------------------------------------------


def converter_options(fmt: str, data_cfg: Any) -> dict[str, Any]:
    """Options from the data config that the converter takes: ``lang`` (Slake) and ``data.options``
    (e.g. ``+data.options.file=my_split.json`` or ``data.options={image_dir: imgs}``)."""
    if fmt not in CONVERTERS:
        raise ValueError(f"data.format={fmt!r} has no converter; known: {', '.join(CONVERTERS)}")
    params = inspect.signature(CONVERTERS[fmt]).parameters
    options = {k: data_cfg[k] for k in ("lang",) if k in params}
    extra = dict(data_cfg.get("options") or {})
    unknown = sorted(k for k in extra if k not in params)
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"data.options {unknown} not accepted by the {fmt} converter; "
                         f"it takes: {', '.join(k for k in params if k not in ('root', 'split'))}")
    return {**options, **extra}


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


def token_stats(lengths: list[int]) -> dict[str, float | int]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    return {"count": len(ordered), "min": ordered[0], "mean": round(statistics.fmean(ordered), 1),
            "p50": ordered[len(ordered) // 2], "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1]}


def type_entry(row: Row, split: str) -> dict[str, Any]:
    meta = row.get("meta") or {}
    return {"split": split, "category": row.get("category"), "answer_type": row.get("answer_type"),
            "source": row.get("source"), "labels": {k: meta[k] for k in SOURCE_LABEL_KEYS if k in meta},
            "rule": meta.get("category_rule")}


def category_table(counts: dict[str, Counter]) -> str:
    """Markdown table: one line per taxonomy category, one column per split."""
    splits = list(counts)
    lines = ["| answer type | category | " + " | ".join(splits) + " |",
             "|---|---|" + "---:|" * len(splits)]
    for cat, (answer_type, _) in CATEGORIES.items():
        lines.append(f"| {answer_type} | `{cat}` | " + " | ".join(str(counts[s][cat]) for s in splits) + " |")
    unlabelled = {s: counts[s][None] for s in splits}
    if any(unlabelled.values()):
        lines.append("| - | (none) | " + " | ".join(str(unlabelled[s]) for s in splits) + " |")
    lines.append("| | **total** | " + " | ".join(str(sum(counts[s].values())) for s in splits) + " |")
    return "\n".join(lines) + "\n"


class SplitResult:
    """Counts of one split while its verdicts are written out."""

    def __init__(self, split: str):
        self.split = split
        self.input = self.kept = 0
        self.by_reason: Counter = Counter()
        self.lengths: list[int] = []
        self.categories: Counter = Counter()
        #: (id, n_tokens) of evaluation rows kept although longer than max_length.
        self.long_kept: list[tuple[Any, int]] = []

    def summary(self) -> dict[str, Any]:
        rejected = sum(self.by_reason.values())
        assert self.kept + rejected == self.input, "kept + rejected must equal the rows read"
        return {"input": self.input, "kept": self.kept, "rejected": rejected,
                "filtered": sum(n for r, n in self.by_reason.items() if r in FILTER_REASONS),
                "by_reason": dict(sorted(self.by_reason.items())), "tokens": token_stats(self.lengths),
                "kept_over_max_length": {"count": len(self.long_kept),
                                         "ids": [row_id for row_id, _ in self.long_kept[:LONG_IDS_LISTED]]}}


#: Ids of long evaluation rows listed in report.json (all are counted).
LONG_IDS_LISTED = 20


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
    from medvl.models.loading import resolve_model_path
    from medvl.tables import console as wide_console

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console = wide_console()
    start = time.perf_counter()
    data = cfg.data
    if OmegaConf.is_missing(data, "root"):
        raise ValueError(f"data={data.name} needs the dataset folder: add data.root=<folder> to the command")
    root, out_dir = Path(data.root), Path(data.dir)
    options = converter_options(data.format, data)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root} is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(cfg.model)  # builds a tiny model once, before workers start
    max_length, length_rule = resolve_max_length(cfg.model, data), describe_max_length(cfg.model, data)
    log.info("Processor from %s (pixels %d..%d); max_length %d, %s; rows from %s (%s) -> %s", model_path,
             cfg.model.min_pixels, cfg.model.max_pixels, max_length, length_rule, root, data.format, out_dir)
    spec = CheckSpec(model_path=model_path, min_pixels=int(cfg.model.min_pixels),
                     max_pixels=int(cfg.model.max_pixels), trust_remote_code=bool(cfg.model.trust_remote_code),
                     root=str(root), system_prompt=cfg.prompt.system_prompt, max_length=max_length,
                     full=bool(cfg.full), follow_symlinks=bool(data.follow_symlinks))
    scored_splits = eval_split_names(data)
    # Loaded here too, so that a model that cannot load fails before any worker starts.
    checker = RowChecker(spec)

    requested = list(cfg.splits)
    results: dict[str, SplitResult] = {}
    type_mapping: dict[str, Any] = {}
    check_seconds = 0.0
    # Every output is written next to its final name and moved into place only once the whole run has
    # succeeded, so a run that fails (a missing split, Ctrl-C, a full disk) leaves the previous outputs as
    # they were; records of splits this run does not process are carried over from them.
    staged = _Staged(out_dir)
    checking = Checking(spec, int(cfg.workers), checker)
    try:
        with open(staged.path("rejects.jsonl"), "w", encoding="utf-8") as rejects_file, \
                _progress(console) as progress:
            for split in requested or SPLITS:
                items = read_split(data.format, root, split, options, required=bool(requested))
                if items is None:
                    log.info("%s: no %s split, skipped", data.name, split)
                    continue
                rows = [item for item in items if not isinstance(item, Reject)]
                task = progress.add_task(f"{split} ({'full' if cfg.full else 'fast'})", total=len(rows))
                t0 = time.perf_counter()
                scored = split in scored_splits
                verdicts = checking.run(rows, scored, lambda n, t=task: progress.advance(t, n))
                check_seconds += time.perf_counter() - t0
                results[split] = write_split(split, items, verdicts, root, staged.path(f"{split}.jsonl"),
                                             rejects_file, type_mapping, scored=scored)
            if not results:
                raise FileNotFoundError(f"data={data.name}: no split of {SPLITS} found in {root}")
            kept_over = _previous_splits(out_dir, results, rejects_file, type_mapping)
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
    n_input = sum(s["input"] for s in splits.values())
    report = {
        "mode": "full" if cfg.full else "fast",
        # root absolute: medvl.train and medvl.eval find the images from data.dir alone (splits.resolve_image_root).
        "data": {"name": data.name, "format": data.format, "root": str(root.absolute()), "dir": str(out_dir),
                 "follow_symlinks": spec.follow_symlinks, **options},
        # What lengths were measured with: training with another model or budget re-checks its rows.
        "model": {"name": cfg.model.name, "path": model_path, "min_pixels": spec.min_pixels,
                  "max_pixels": spec.max_pixels, "max_image_tokens": max_image_tokens(cfg.model)},
        "max_length": spec.max_length,
        "max_length_rule": length_rule,
        "system_prompt": spec.system_prompt,
        "workers": int(cfg.workers),
        "splits": splits,
        "total": {"input": n_input, "kept": sum(s["kept"] for s in splits.values()),
                  "tokens": token_stats(lengths),
                  "rejected": sum(s["rejected"] for s in splits.values()),
                  "by_reason": dict(sorted(sum((Counter(s["by_reason"]) for s in splits.values()),
                                               Counter()).items()))},
        "seconds": {"check": round(check_seconds, 3), "total": round(time.perf_counter() - start, 3)},
    }
    if kept_over:
        report["kept_from_previous_run"] = sorted(kept_over, key=_split_order)
    report["warnings"] = length_warnings(report, out_dir)
    if cfg.model.build_tiny:  # the default model: lengths of a real model's run will differ
        report["warnings"].append(f"lengths were measured with model={cfg.model.name} ({max_image_tokens(cfg.model)} "
                                  f"image tokens at most); add model=<the model you will train, e.g. 7b> to count "
                                  f"its drops here (training with another model re-measures at start-up)")
    try:
        staged.path("report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        staged.path("type_mapping.json").write_text(json.dumps(type_mapping, indent=1, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
        staged.path("categories.md").write_text(
            f"# Categories of {data.name} (kept rows)\n\n"
            + category_table({s: categories[s] for s in splits}), encoding="utf-8")
    except BaseException:
        staged.discard()
        raise
    staged.commit()
    console.print(summary_table(report))
    for line in report["warnings"]:
        console.print(f"[yellow]{line}[/yellow]", highlight=False)
        log.warning(line)
    log.info("Wrote %s", ", ".join(str(out_dir / f) for f in [*(f"{s}.jsonl" for s in splits), "rejects.jsonl",
                                                                 "report.json", "type_mapping.json", "categories.md"]))
    return report


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


def length_warnings(report: dict[str, Any], out_dir: Path) -> list[str]:
    """One line per split whose rows' length mattered: training rows dropped, evaluation rows kept."""
    lines = []
    for split, s in report["splits"].items():
        dropped = s["by_reason"].get("too_long", 0)
        if dropped:
            lines.append(f"{split}: {dropped} of {s['input']} rows dropped as too_long (longer than max_length="
                         f"{report['max_length']}, {report['max_length_rule']}); each is in "
                         f"{out_dir / 'rejects.jsonl'}; raise data.max_length (or data.text_tokens) to keep them")
        long_kept = (s.get("kept_over_max_length") or {}).get("count", 0)
        if long_kept:
            lines.append(f"{split}: {long_kept} rows longer than max_length={report['max_length']} kept (an "
                         f"evaluation split is never cut; generation and perplexity read them whole); ids in "
                         f"report.json")
    return lines


def summary_table(report: dict[str, Any]):
    """One line per split: rows read, kept, rejected by reason, and token lengths of the kept rows."""
    import pandas as pd

    from medvl.tables import rich_table

    reasons = list(report["total"]["by_reason"])
    rows = []
    for split, s in [*report["splits"].items(), ("total", report["total"])]:
        tokens = s.get("tokens", {})
        span = f"{tokens['p50']}/{tokens['p95']}/{tokens['max']}" if tokens.get("count") else "-"
        rows.append([split, s["input"], s["kept"], s["rejected"], *(s["by_reason"].get(r, 0) for r in reasons), span])
    columns = ["split", "input", "kept", "rejected", *reasons, "tokens p50/p95/max"]
    return rich_table(pd.DataFrame(rows, columns=columns, dtype=object), right=columns[1:],
                      title=f"medvl.prepare {report['data']['name']} ({report['mode']}, max_length "
                            f"{report['max_length']})")
