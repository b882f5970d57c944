"""Converters from published dataset formats into medvl's unified rows.

``convert(name, root, split, **options)`` yields, for every input row, either a unified row
(:mod:`medvl.data.format`) with ``answer_type`` and ``category`` filled in by
:func:`medvl.data.categorize.categorize`, or a :class:`Reject` saying where the row was and why it
was left out. A bad row never stops a conversion, so kept + rejected equals the rows read.
Splits are named ``train`` / ``validation`` / ``test`` everywhere; each converter maps them to its
dataset's own file names. Options per converter:

==================== ============================================ ===========================
name                 input (relative to ``root``)                 options
==================== ============================================ ===========================
llava_med_align      alignment/llava_med_alignment_500k.json      file, image_dir="images"
llava_med_instruct   instruct/llava_med_instruct_60k.json         file, image_dir="images"
slake                train.json / validate.json / test.json       lang="en"|"zh"|"all", file,
                                                                  image_dir="imgs"
vqa_rad              trainset.json / testset.json (MEVF)          file, image_dir="images"
pathvqa              train.json / val.json / test.json            file, image_dir=""
gmai_mmbench         GMAI-MMBench_VAL.tsv / GMAI-MMBench_TEST.tsv file, image_dir
pmc_vqa              train_2.csv / test_2.csv (else v1 CSVs)      file, image_dir
omnimedvqa           QA_information/Open-access/*.json (test)     access="open"|"restricted"|
                                                                  "all", file, image_dir=""
mmmu                 <Subject>/validation-*.parquet (or .jsonl)   subjects (Health & Medicine),
                                                                  file, image_dir="images"
medxpertqa           MM/test.jsonl / MM/dev.jsonl                 file, image_dir="images"
hf                   data.source: a save_to_disk folder, or       source, columns, lang,
                     Parquet (data/<split>-*.parquet)             dataset, image_dir, splits
llava                <split>.jsonl or <split>.json                file, image_dir=""
==================== ============================================ ===========================
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from medvl.data.categorize import categorize, categorize_answer_type
from medvl.data.converters._common import FILTER_REASONS, REASONS, SPLITS, Reject, Row
from medvl.data.converters.gmai_mmbench import convert_gmai_mmbench, format_multiple_choice
from medvl.data.converters.hf import convert_hf
from medvl.data.converters.llava import convert_llava
from medvl.data.converters.llava_med import convert_llava_med_align, convert_llava_med_instruct
from medvl.data.converters.medxpertqa import convert_medxpertqa
from medvl.data.converters.mmmu import convert_mmmu
from medvl.data.converters.omnimedvqa import convert_omnimedvqa
from medvl.data.converters.pathvqa import convert_pathvqa
from medvl.data.converters.pmc_vqa import convert_pmc_vqa
from medvl.data.converters.slake import convert_slake
from medvl.data.converters.vqa_rad import convert_vqa_rad
from medvl.data.taxonomy import BUILTIN

__all__ = [
    "CONVERTERS",
    "FILTER_REASONS",
    "REASONS",
    "SPLITS",
    "Converter",
    "ConverterError",
    "Reject",
    "Row",
    "convert",
    "converter_for",
    "format_multiple_choice",
    "partition",
]


class ConverterError(ValueError):
    """The command names no usable input: ``data.root`` missing, or ``data.format`` / ``data.options`` wrong;
    said in one line."""


class Converter(Protocol):
    def __call__(self, root: Path, split: str, **options: Any) -> Iterator[Row | Reject]: ...


CONVERTERS: dict[str, Converter] = {
    "llava_med_align": convert_llava_med_align,
    "llava_med_instruct": convert_llava_med_instruct,
    "slake": convert_slake,
    "vqa_rad": convert_vqa_rad,
    "pathvqa": convert_pathvqa,
    "gmai_mmbench": convert_gmai_mmbench,
    "pmc_vqa": convert_pmc_vqa,
    "omnimedvqa": convert_omnimedvqa,
    "mmmu": convert_mmmu,
    "medxpertqa": convert_medxpertqa,
    "llava": convert_llava,
    "hf": convert_hf,
}


def converter_for(name: str) -> Converter:
    """The converter registered as ``name`` in :data:`CONVERTERS`, or one named by its import path,
    ``package.module:function``, so a dataset of one's own needs no change inside medvl.

    Raises:
        ConverterError: not registered, or the import path does not lead to a callable.
    """
    if name in CONVERTERS:
        return CONVERTERS[name]
    module_name, _, attr = name.partition(":")
    if not attr:
        raise ConverterError(f"data.format={name!r} has no converter; known: {', '.join(CONVERTERS)}, "
                         "or an import path such as mypackage.mydata:convert_mydata")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConverterError(f"data.format={name!r}: cannot import the converter ({e})") from None
    if not callable(found):
        raise ConverterError(f"data.format={name!r} is not a function")
    return found


def convert(name: str, root: str | Path, split: str, *, categories: Mapping[str, str] | None = None,
            **options: Any) -> Iterator[Row | Reject]:
    """Yield the unified rows and Rejects of one split of a dataset.

    ``categories`` is the data config's own taxonomy (:func:`medvl.data.taxonomy.declared_taxonomy`; None: the
    built-in 12). It goes to converters that read given labels (a ``categories`` parameter); a row that comes
    without a category gets the built-in rules' category only under the built-in taxonomy, since they cannot
    name a user's categories: under a user's, it gets its answer type and no category (docs/taxonomy.md).

    Raises:
        ValueError: unknown converter, split or option value.
        FileNotFoundError: the split's input file is not there.
    """
    converter = converter_for(name)
    if categories is not None and "categories" in inspect.signature(converter).parameters:
        options["categories"] = categories
    for item in converter(Path(root), split, **options):
        if isinstance(item, Reject):
            yield item
            continue
        known = BUILTIN if categories is None else categories
        if item["category"] is not None:
            item["meta"].setdefault("category_rule", "given")
            if item.get("answer_type") is None and isinstance(item["category"], str) and item["category"] in known:
                item["answer_type"] = known[item["category"]]
        elif categories is None:
            answer_type, category, rule = categorize(item)
            item["answer_type"], item["category"] = answer_type, category
            item["meta"]["category_rule"] = rule
        else:
            item["answer_type"], rule = categorize_answer_type(item)
            item["meta"]["category_rule"] = f"{rule}; no category (data.categories declares the taxonomy)"
        yield item


def partition(items: Iterable[Row | Reject]) -> tuple[list[Row], list[Reject]]:
    """Split a converter's (or the row checks') output into kept rows and Rejects."""
    rows: list[Row] = []
    rejects: list[Reject] = []
    for item in items:
        (rejects if isinstance(item, Reject) else rows).append(item)
    return rows, rejects
