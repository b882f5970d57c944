"""PMC-VQA as published on the Hugging Face Hub (``xmcmic/PMC-VQA``): CSV metafiles beside the images.

Checked against: the dataset card (xmcmic/PMC-VQA README.md: train.csv / test.csv / test_clean.csv, columns
Figure_path, Question, Answer, Choice A..D written ``A:Diffuse uptake pattern``, Answer_label) and
MedEvalKit's reader (alibaba-damo-academy/MedEvalKit utils/PMC_VQA/PMC_VQA.py: version 2's test_2.csv, columns
index, Figure_path, Caption, Question, Choice A..D, Answer, split; images under ``figures/`` or ``images/``).
lmms-eval has no PMC-VQA task.

The root is the downloaded folder with its zips extracted. Splits: ``train`` is train_2.csv (else train.csv),
``test`` is test_2.csv, the one MedEvalKit reports (else test_clean.csv, else test.csv); ``file=`` picks any
other. The answer letter is ``Answer_label`` where the file has it (version 1), else ``Answer`` (version 2),
given as a letter or as the text of one option. The ``X:`` prefix of each choice is dropped, since the prompt
letters the options itself. Images: ``image_dir/Figure_path``; without ``image_dir``, MedEvalKit's lookup:
``figures/`` where the file is there, else ``images/``. The row id is the ``index`` column, else the row's
0-based position in the file. PMC-VQA carries no labels to break scores down by.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvl.data.converters._choice import choice_row
from medvl.data.converters._common import Reject, Row, join_image, split_file

FILES = {
    "train": ("train_2.csv", "train.csv"),
    "test": ("test_2.csv", "test_clean.csv", "test.csv"),
}
LETTERS = ("A", "B", "C", "D")
REQUIRED = ("Figure_path", "Question", *(f"Choice {c}" for c in LETTERS))
_PREFIX = re.compile(r"^\s*\(?([A-Da-d])\)?\s*[:.]\s*")


def convert_pmc_vqa(root: Path, split: str, *, file: str | None = None,
                    image_dir: str | None = None) -> Iterator[Row | Reject]:
    path = split_file(root, split, FILES, file, "pmc_vqa")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        line = 2
        for n, record in enumerate(reader):
            loc = f"{path.name}:line {line}"
            line = reader.line_num + 1
            yield _row(loc, n, record, root, split, image_dir)


def _row(loc: str, n: int, record: dict[Any, Any], root: Path, split: str, image_dir: str | None) -> Row | Reject:
    if None in record or None in record.values():
        return Reject(loc, "malformed_row", "the line's number of columns differs from the header", raw=record)
    answer_column = "Answer_label" if "Answer_label" in record else "Answer"
    absent = [c for c in (*REQUIRED, answer_column) if c not in record]
    figure = (record.get("Figure_path") or "").strip()
    if not absent and not figure:
        absent.append("Figure_path (empty)")
    if absent:
        return Reject(loc, "missing_field", f"missing {', '.join(absent)}", raw=record)
    options = {c: _PREFIX.sub("", record[f"Choice {c}"], count=1) if _prefix_is(record[f"Choice {c}"], c)
               else record[f"Choice {c}"] for c in LETTERS}
    answer = record[answer_column].strip()
    if _PREFIX.match(answer) and answer_column == "Answer":  # "B:Focal uptake pattern" in early copies
        answer = _PREFIX.match(answer).group(1)
    index = (record.get("index") or "").strip() or str(n)
    meta = {"index": index, "figure": figure}
    return choice_row(loc, record, row_id=f"pmc_vqa-{split}-{index}", source="pmc_vqa",
                      image=_image(root, figure, image_dir), question=record["Question"], options=options,
                      answer=answer, meta=meta)


def _prefix_is(text: str, letter: str) -> bool:
    match = _PREFIX.match(text)
    return bool(match) and match.group(1).upper() == letter


def _image(root: Path, figure: str, image_dir: str | None) -> str:
    if image_dir is not None:
        return join_image(image_dir, figure)
    figures = join_image("figures", figure)
    return figures if (root / figures).is_file() else join_image("images", figure)
