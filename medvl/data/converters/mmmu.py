"""MMMU's Health & Medicine subjects as the Hub publishes them (``MMMU/MMMU``): one folder per subject with
``dev-`` / ``validation-`` / ``test-*.parquet``, images embedded.

Checked against: the dataset card's features (HuggingFaceM4/MMMU and MMMU/MMMU README.md: id, question,
options as a string, explanation, image_1 .. image_7 as images, img_type, answer, topic_difficulty,
question_type, subfield; the MMMU/MMMU file tree ``Clinical_Medicine/validation-00000-of-00001.parquet``),
lmms-eval's task (EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/mmmu/utils.py: ``ast.literal_eval(options)``
lettered A, B, ...; ``<image N>`` references in question and options; the subject from the id
``validation_Clinical_Medicine_1``; Health and Medicine = the five subjects below) and MedEvalKit's
(alibaba-damo-academy/MedEvalKit utils/MMMU/data_utils.py: the same subjects, open questions scored too).

Parquet needs pyarrow (not a medvl dependency: ``pip install pyarrow``); the same records as JSON/JSONL
(``file=``, or ``<Subject>/<split>.jsonl``), with image_N as a path relative to the root, need nothing.
Embedded images are written once to ``<image_dir>/<split>/<id>_<N>.<ext>`` under the root (bytes unchanged,
not rewritten when already there).

Images in the prompt: each ``<image N>`` in the question, then in the options, becomes medvl's ``<image>``
placeholder where it stands, and the row's images are listed in the order of those first references (as
lmms-eval's interleaved format does); a second reference to the same image reads ``image N``. An image
column the text never refers to is kept, in front of the question. A reference to an empty column is a
reject. Multiple-choice questions get the options listed and the letter as answer; open questions
(``question_type: open``) keep their answer text (the first of a ``['a', 'b']`` list, all in
``meta.answers``) and are scored as open rows. The test split withholds answers (``?``): its rows are
rejected. ``meta``: id, subject, subfield, difficulty (topic_difficulty), img_type, question_type.
"""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from medvl.data.converters._choice import choice_row, letter_options
from medvl.data.converters._common import SPLITS, Reject, Row, iter_records, norm_path
from medvl.data.format import IMAGE_TOKEN, make_row

SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
            "Public_Health")
SPLIT_FILES = {"validation": "validation", "test": "test"}
N_IMAGES = 7
_REF = re.compile(r"<image (\d+)>")
_ID = re.compile(r"^(?:dev|validation|test)_(.+)_(\d+)$")
_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def convert_mmmu(root: Path, split: str, *, subjects: list[str] | tuple[str, ...] = SUBJECTS,
                 file: str | None = None, image_dir: str = "images") -> Iterator[Row | Reject]:
    for path in _files(root, split, subjects, file):
        for item in _records(path):
            if isinstance(item, Reject):
                yield item
                continue
            loc, record = item
            yield _row(loc, record, root, split, norm_path(image_dir).rstrip("/"))


def _files(root: Path, split: str, subjects: Any, file: str | None) -> list[Path]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else root / file
        if not path.is_file():
            raise FileNotFoundError(f"mmmu: input file {path} does not exist")
        return [path]
    if split not in SPLIT_FILES:
        raise ValueError(f"mmmu has no {split!r} split; it has {tuple(SPLIT_FILES)}")
    name = SPLIT_FILES[split]
    paths: list[Path] = []
    for subject in subjects:
        found = sorted((root / subject).glob(f"{name}-*.parquet")) or [
            p for p in (root / subject / f"{name}.jsonl", root / subject / f"{name}.json") if p.is_file()][:1]
        if not found:
            raise FileNotFoundError(f"mmmu {split}: no {root / subject / name}-*.parquet or .jsonl (pass file=...)")
        paths += found
    return paths


def _records(path: Path) -> Iterator[tuple[str, Any] | Reject]:
    if path.suffix != ".parquet":
        yield from iter_records(path)
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:
        from medvl.data.converters import ConverterError  # the package's error, raised only at call time

        raise ConverterError(f"mmmu: reading {path.name} needs pyarrow (pip install pyarrow)") from None
    n = 0
    # Batches: a test file of one subject holds ~100 MB of images.
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
        for record in batch.to_pylist():
            yield f"{path.parent.name}/{path.name}:row {n}", record
            n += 1


def _row(loc: str, record: Any, root: Path, split: str, image_dir: str) -> Row | Reject:
    if not isinstance(record, dict):
        return Reject(loc, "malformed_row", f"expected an object, got {type(record).__name__}", raw=record)
    absent = [k for k in ("id", "question", "options", "answer") if record.get(k) is None]
    if absent:
        return Reject(loc, "missing_field", f"missing {', '.join(absent)}", raw=_short(record))
    record_id = str(record["id"])
    if not _SAFE.match(record_id):  # it names the image files written for the row
        return Reject(loc, "bad_value", f"id {record_id!r} is not a plain name", raw=_short(record))
    options = _options(record["options"])
    if options is None:
        return Reject(loc, "bad_value", f"options is not a list: {record['options']!r}", raw=_short(record))
    answer = str(record["answer"]).strip()
    if answer == "?":
        return Reject(loc, "empty_answer", "answer withheld (MMMU's test split); evaluate split=validation",
                      raw=_short(record))
    images = _images(loc, record, root, split, image_dir)
    if isinstance(images, Reject):
        return images
    question, texts, order = _interleave(str(record["question"]), [str(o) for o in options])
    missing = [n for n in order if n not in images]
    if missing:
        return Reject(loc, "missing_field", f"the text refers to <image {missing[0]}> but image_{missing[0]} is "
                      "empty", raw=_short(record))
    front = [n for n in sorted(images) if n not in order]
    question = (IMAGE_TOKEN + "\n") * len(front) + question
    paths = [images[n] for n in front + order]
    meta = _meta(record, record_id)
    row_id = f"mmmu-{split}-{record_id.removeprefix(split + '_')}"
    if record.get("question_type") == "open" or not options:
        row = _open_row(row_id, question, answer, meta)
    else:
        row = choice_row(loc, _short(record), row_id=row_id, source="mmmu", image=[], question=question,
                         options=letter_options(texts), answer=answer, meta=meta)
    if isinstance(row, dict):
        row["image"] = paths or None  # the placeholders are already in the text, in this order
    return row


def _options(value: Any) -> list[Any] | None:
    """The Hub stores options as the text of a Python list (``"['A', 'B']"``); JSON copies may hold a list."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    return value if isinstance(value, list) else None


def _interleave(question: str, options: list[str]) -> tuple[str, list[str], list[int]]:
    """Question and options with each first ``<image N>`` as ``<image>``; the image numbers in that order."""
    order: list[int] = []

    def place(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n in order:
            return f"image {n}"
        order.append(n)
        return IMAGE_TOKEN

    question = _REF.sub(place, question)
    return question, [_REF.sub(place, o) for o in options], order


def _images(loc: str, record: dict[str, Any], root: Path, split: str, image_dir: str) -> dict[int, str] | Reject:
    """Image number -> path under the root, writing embedded bytes out once."""
    found: dict[int, str] = {}
    for n in range(1, N_IMAGES + 1):
        value = record.get(f"image_{n}")
        if isinstance(value, dict) and value.get("bytes"):
            path = _write_image(value["bytes"], root, f"{image_dir}/{split}/{record['id']}_{n}")
            if path is None:
                return Reject(loc, "bad_image_data", f"image_{n} does not decode to an image", raw=_short(record))
            found[n] = path
        elif isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"].strip():
            found[n] = norm_path(value["path"].strip())
        elif isinstance(value, str) and value.strip():
            found[n] = norm_path(value.strip())
    return found


def _write_image(data: bytes, root: Path, stem: str) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    rel = stem + _EXTENSIONS.get(fmt, "." + fmt.lower())
    out = root / rel
    if not (out.is_file() and out.stat().st_size == len(data)):  # a re-run leaves unchanged images alone
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return rel


def _open_row(row_id: str, question: str, answer: str, meta: dict[str, Any]) -> Row:
    answers = _options(answer) if answer.startswith("[") else None
    if answers:
        meta["answers"] = [str(a) for a in answers]
        answer = meta["answers"][0]
    return make_row(row_id, None, question, answer, source="mmmu", meta=meta)


def _meta(record: dict[str, Any], record_id: str) -> dict[str, Any]:
    match = _ID.match(record_id)
    meta: dict[str, Any] = {"id": record_id}
    if match:
        meta["subject"] = match.group(1)
    for key, name in (("subfield", "subfield"), ("topic_difficulty", "difficulty"),
                      ("question_type", "question_type")):
        if isinstance(record.get(key), str) and record[key].strip():
            meta[name] = record[key].strip()
    img_type = _options(record.get("img_type")) if record.get("img_type") else None
    if img_type:
        meta["img_type"] = [str(t) for t in img_type]
    return meta


def _short(record: dict[str, Any]) -> dict[str, Any]:
    """The raw record for a Reject, without embedded image bytes."""
    return {k: (f"<{len(v['bytes'])} image bytes>" if isinstance(v, dict) and isinstance(v.get("bytes"), bytes)
                else v) for k, v in record.items()}
