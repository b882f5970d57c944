"""Verdicts on rows, in parallel processes: the row checks, then the row's token length.

:class:`RowChecker` gives one process's verdicts: the row checks (:mod:`medvl.data.row_checks`), then the
length with the configured model's processor, by one of two paths that must agree on every row:

- fast (default): image sizes from :func:`medvl.data.images.image_size` and the processor's resize rule
  (:func:`medvl.data.token_length.token_length`); no pixel is decoded where the file structure allows.
- full (``full=true``): the real ``VQADataset`` item and ``Collator`` batch, exactly what training runs.

:class:`Checking` runs a split's rows through a pool of such checkers and survives a worker that dies.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from medvl.config.families import DEFAULT_FAMILY
from medvl.data.converters import Row
from medvl.data.dataset import Collator, VQADataset
from medvl.data.format import image_paths
from medvl.data.images import image_size, load_rgb
from medvl.data.row_checks import (
    Check,
    Problem,
    check_template_images,
    default_checks,
    first_problem,
    image_problem,
    make_special_token_check,
)
from medvl.data.token_length import token_length

#: (reason or None, message, token length or None) for one row.
Verdict = tuple[str | None, str, int | None]


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
    #: model.family: how the processor takes the pixel budget (medvl.models.loading.load_processor).
    family: str = DEFAULT_FAMILY
    #: data.categories as medvl.data.taxonomy.declared_taxonomy reads it (None: the built-in 12).
    categories: dict[str, str] | None = None


class RowChecker:
    """Verdicts on rows, one process's worth: the processor is loaded once."""

    def __init__(self, spec: CheckSpec, processor=None):
        from medvl.models.loading import load_processor

        self.spec = spec
        self.root = Path(spec.root)
        model = SimpleNamespace(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
                                trust_remote_code=spec.trust_remote_code, family=spec.family)
        self.processor = processor or load_processor(model, spec.model_path)
        self._checks: dict[bool, list[Check]] = {}
        # Datasets ask several questions per image; a file is inspected once per run and process.
        self._sizes: dict[Path, tuple[int, int]] = {}

    def checks(self, require_category: bool) -> list[Check]:
        """The row checks without the duplicate-id check, which runs in input order in the main process."""
        if require_category not in self._checks:
            checks = default_checks(require_category=require_category, decode_images=False,
                                    follow_symlinks=self.spec.follow_symlinks, categories=self.spec.categories)[:-1]
            self._checks[require_category] = [*checks, check_template_images,
                                               make_special_token_check(self.processor.tokenizer)]
        return self._checks[require_category]

    def verdict(self, row: Any, require_category: bool) -> Verdict:
        problem = first_problem(row, self.root, self.checks(require_category))
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
                return image_problem(rel, exc), None
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
            return image_problem(rel, exc), None
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
