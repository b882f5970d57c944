"""GMAI-MMBench as VLMEvalKit ships it: ``GMAI-MMBench_VAL.tsv`` / ``GMAI-MMBench_TEST.tsv``.

The root is VLMEvalKit's ``LMUData`` folder. Columns: index, question, A..E (blank where a
question has fewer options), answer (a letter), category, clinical VQA task, department,
perceptual granularity, modality, original task, and either ``image`` (base64 image bytes) or
``image_path``. Column names are matched ignoring case and surrounding spaces, except the option
letters A..E: the Hub's TSV spells ``clinical VQA task``, VLMEvalKit's result sheets lower-case it.

Base64 images are written, bytes unchanged, to ``<root>/images/<tsv stem>/<index>.<ext>`` (the
folder VLMEvalKit itself dumps them to) unless ``image_dir`` says otherwise. As in VLMEvalKit, an
``image`` value of at most 64 characters is the index of another row whose image is shared; such
rows are yielded after the others when they point forward. A row's image is written before the
row is checked, so rows sharing it keep it when that row itself is rejected. An absolute
``image_path`` (copies carry paths like ``/root/LMUData/images/GMAI-MMBench_VAL/0.jpg`` from the
machine that made them) is made relative to the root when it lies inside it, else re-rooted at
its last ``images/`` component; anything else is left absolute for validation to reject.

Each row becomes a multiple-choice question that lists the options; the reference answer is the
option letter, and ``meta`` keeps the options, the answer text and the benchmark's labels under
short names: task, department, granularity, modality, label (the ``category`` column),
original_task. VLMEvalKit's TEST file withholds the answers, so its rows are rejected
(empty_answer, or missing_field where the column is absent).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import re
import string
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from medvl.data.converters._common import Reject, Row, as_text, norm_path, split_file
from medvl.data.format import make_row

FILES = {
    "validation": ("GMAI-MMBench_VAL.tsv",),
    "test": ("GMAI-MMBench_TEST.tsv",),
}
#: TSV column (as :func:`_column_name` spells it) -> meta key.
META_COLUMNS = {
    "clinical vqa task": "task",
    "department": "department",
    "perceptual granularity": "granularity",
    "modality": "modality",
    "category": "label",
    "original task": "original_task",
}
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# pandas (which VLMEvalKit reads the TSV with) turns these into NaN, i.e. "no option".
_BLANK = {"", "nan", "NaN"}
_SAFE_INDEX = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif",
               "WEBP": ".webp"}


def format_multiple_choice(question: str, options: dict[str, str]) -> str:
    """The question followed by one ``X. option`` line per option and the answer instruction."""
    lines = [question] + [f"{letter}. {text}" for letter, text in options.items()]
    return "\n".join(lines + [MC_INSTRUCTION])


def convert_gmai_mmbench(root: Path, split: str, *, file: str | None = None,
                         image_dir: str | None = None) -> Iterator[Row | Reject]:
    path = split_file(root, split, FILES, file, "gmai_mmbench")
    image_dir = norm_path(image_dir) if image_dir else f"images/{path.stem}"
    # Base64 images are far larger than csv's default 128 KiB field limit (a process-wide setting).
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    written: dict[str, str] = {}  # index -> image path, for rows that share another row's image
    deferred: list[tuple[str, dict[str, Any], tuple[dict[str, Any], str, str], str]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if reader.fieldnames:
            reader.fieldnames = [_column_name(name) for name in reader.fieldnames]
        letters = [c for c in string.ascii_uppercase if c in (reader.fieldnames or [])]
        start = 2
        for record in reader:
            loc = f"{path.name}:line {start}"
            start = reader.line_num + 1
            bad = _malformed(record, loc)
            if bad is not None:
                yield bad
                continue
            index, image_value = (record.get("index") or "").strip(), (record.get("image") or "").strip()
            ref = image_value if image_value and len(image_value) <= 64 else None
            image = None
            # Before the row is checked: other rows may share this image even when this row is rejected.
            if ref is None and _SAFE_INDEX.match(index):
                image = _own_image(record, image_value, root, image_dir, index)
                if image is not None:
                    written[index] = image
            parsed = _parse(record, loc, letters, split)
            if isinstance(parsed, Reject):
                yield parsed
            elif ref is not None and ref not in written:
                deferred.append((loc, record, parsed, ref))
            elif ref is None and image is None:
                yield Reject(loc, "bad_image_data", "image column is not a base64-encoded image",
                             raw=_short(record))
            else:
                yield _row(parsed, written[ref] if ref is not None else image, split)
    for loc, record, parsed, ref in deferred:
        if ref not in written:
            yield Reject(loc, "bad_image_reference", f"image refers to index {ref!r}, which has "
                         "no image", raw=_short(record))
            continue
        yield _row(parsed, written[ref], split)


def _column_name(name: str) -> str:
    """A TSV column name as the converter looks it up: option letters as they are, others lower-case
    with their spaces trimmed and collapsed."""
    name = " ".join(name.split())
    return name if len(name) == 1 and name in string.ascii_uppercase else name.lower()


def _malformed(record: dict[str | None, Any], loc: str) -> Reject | None:
    if None in record:
        return Reject(loc, "malformed_row", f"{len(record[None])} more column(s) than the header",
                      raw=_short(record))
    short = [k for k, v in record.items() if v is None]
    if short:
        return Reject(loc, "malformed_row", f"fewer columns than the header (no {short[0]!r})",
                      raw=_short(record))
    return None


def _parse(record: dict[str, Any], loc: str, letters: list[str],
           split: str) -> tuple[dict[str, Any], str, str] | Reject:
    """(meta, question text, answer letter) of a TSV row, or why it cannot be used."""
    absent = [c for c in ("index", "question", "answer") if c not in record]
    if not (record.get("image") or "").strip() and not (record.get("image_path") or "").strip():
        absent.append("image/image_path")
    if absent:
        return Reject(loc, "missing_field", f"missing {', '.join(absent)}", raw=_short(record))
    index = record["index"].strip()
    if not _SAFE_INDEX.match(index):
        # The index names the image file written for the row, so it must be a plain file name.
        return Reject(loc, "bad_value", f"index {index!r} is not a plain name", raw=_short(record))
    question = as_text(record["question"])
    if not question:
        return Reject(loc, "empty_question", "question is empty", raw=_short(record))
    options = {c: record[c].strip() for c in letters if record[c].strip() not in _BLANK}
    if len(options) < 2:
        return Reject(loc, "bad_options", f"{len(options)} option(s); a multiple-choice "
                      "question needs two or more", raw=_short(record))
    answer = record["answer"].strip()
    if answer in _BLANK:
        return Reject(loc, "empty_answer", "answer is empty", raw=_short(record))
    answer = answer.upper()
    if answer not in options:
        return Reject(loc, "bad_answer_option", f"answer {answer!r} is not one of "
                      f"{list(options)}", raw=_short(record))
    meta: dict[str, Any] = {"index": index}
    for column, key in META_COLUMNS.items():
        if record.get(column, "").strip() not in _BLANK:
            meta[key] = record[column].strip()
    meta["options"] = options
    meta["answer_text"] = options[answer]
    return meta, format_multiple_choice(question, options), answer


def _row(parsed: tuple[dict[str, Any], str, str], image: str, split: str) -> Row:
    meta, question, answer = parsed
    return make_row(f"gmai_mmbench-{split}-{meta['index']}", image, question, answer,
                    source="gmai_mmbench", meta=meta)


def _own_image(record: dict[str, Any], image_value: str, root: Path, image_dir: str,
               index: str) -> str | None:
    """The row's own image (its base64 image written out, or its image_path); None if it has none."""
    if image_value:
        return _write_image(image_value, root, image_dir, index)
    image_path = (record.get("image_path") or "").strip()
    return _relative_image_path(image_path, root) if image_path else None


def _write_image(b64: str, root: Path, image_dir: str, index: str) -> str | None:
    """Decode a base64 image to ``image_dir/<index>.<ext>`` below root; its relative path."""
    try:
        data = base64.b64decode("".join(b64.split()), validate=True)
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None
    rel = f"{image_dir}/{index}{_EXTENSIONS.get(fmt, '.' + fmt.lower())}"
    out = root / rel
    # Re-running a conversion should not rewrite thousands of unchanged images.
    if not (out.is_file() and out.stat().st_size == len(data)):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return rel


def _relative_image_path(value: str, root: Path) -> str:
    path = norm_path(value)
    pure = PurePosixPath(path)
    if not pure.is_absolute() and not re.match(r"^[A-Za-z]:/", path):
        return path
    try:
        return pure.relative_to(root.resolve().as_posix()).as_posix()
    except ValueError:
        pass
    parts = pure.parts
    if "images" in parts:
        last = len(parts) - 1 - parts[::-1].index("images")
        return PurePosixPath(*parts[last:]).as_posix()
    return path


def _short(record: dict[Any, Any]) -> dict[Any, Any]:
    """The raw row for a Reject, without megabytes of base64."""
    out = dict(record)
    if isinstance(out.get("image"), str) and len(out["image"]) > 64:
        out["image"] = f"<base64, {len(out['image'])} chars>"
    return out
