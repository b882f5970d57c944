"""Pieces every converter shares: the ``Reject`` record, file readers and field helpers.

A converter never raises for a bad row: it yields a :class:`Reject` naming where the row was,
why it was left out and the raw row, and goes on. It raises only for mistakes in the call itself
(an unknown split, a missing input file), which no row can fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvl.data.format import GPT, HUMAN, IMAGE_TOKEN, make_row

Row = dict[str, Any]

SPLITS = ("train", "validation", "test")

#: Reason code -> what it means. Converters and :mod:`medvl.data.row_checks` use only these.
REASONS: dict[str, str] = {
    "malformed_json": "the line (JSONL) or the whole file (JSON list) is not valid JSON",
    "malformed_row": "the record is not an object, or a TSV line has the wrong number of columns",
    "missing_field": "a required field is absent or null",
    "bad_value": "a field has a type or value the converter cannot use",
    "empty_question": "the question is empty",
    "empty_answer": "the answer is empty",
    "bad_options": "a multiple-choice row has fewer than two options",
    "bad_answer_option": "the answer letter is not one of the row's options",
    "bad_image_data": "an embedded image (base64 text, or bytes in Parquet/Arrow) is not an image",
    "bad_image_reference": "the image column points at a row index that has no image",
    "bad_category": "a given category is not one the taxonomy declares (the built-in 12, or data.categories) or "
                    "contradicts the row's answer type",
    "lang_filtered": "left out on purpose: the row's language is not the selected one",
    # Row checks (medvl.data.row_checks).
    "bad_field_type": "a field of the unified row has the wrong type",
    "bad_roles": "turns do not alternate human/gpt, starting with human and ending with gpt",
    "placeholder_mismatch": "the number of <image> placeholders differs from the number of images",
    "image_outside_root": "the image path leaves the data root (.., absolute path, symlink)",
    "image_missing": "the image file does not exist",
    "image_unreadable": "the image file does not decode",
    "image_mode_unsupported": "the image's pixel mode cannot be converted to RGB",
    "missing_category": "an evaluation row has no taxonomy category",
    "duplicate_id": "the row id was already used earlier in the split",
    # Reserved for the processor-based token-length check appended to the row checks later.
    "too_long": "the tokenized row is longer than data.max_length",
}

#: Reasons that record a deliberate selection rather than bad data; reports may list them apart.
FILTER_REASONS = frozenset({"lang_filtered"})


@dataclass(frozen=True)
class Reject:
    """One input row that did not become a unified row.

    Attributes:
        source: where the row was, e.g. ``"train.json:row 17"`` (0-based index into the JSON
            list), ``"data.jsonl:line 5"`` or ``"GMAI-MMBench_VAL.tsv:line 5"`` (1-based lines).
        reason: a code from :data:`REASONS`.
        message: one line for a human.
        raw: the row as read (``None`` where nothing could be read, e.g. a broken JSON file).
    """

    source: str
    reason: str
    message: str
    raw: Any = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}")

    @property
    def is_filter(self) -> bool:
        return self.reason in FILTER_REASONS


def split_file(root: Path, split: str, files: Mapping[str, tuple[str, ...]], file: str | None,
               dataset: str) -> Path:
    """The input file of ``split``: ``file`` if given (relative to root), else the first existing
    candidate in ``files[split]``. Raises for an unknown split or when no file exists."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else root / file
        if not path.is_file():
            raise FileNotFoundError(f"{dataset}: input file {path} does not exist")
        return path
    if split not in files:
        raise ValueError(f"{dataset} has no {split!r} split; it has {tuple(files)}")
    candidates = [root / name for name in files[split]]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{dataset} {split}: none of {[str(p) for p in candidates]} exists (pass file=...)"
    )


def iter_records(path: Path) -> Iterator[tuple[str, Any] | Reject]:
    """Yield ``(location, record)`` for each record of a JSON-list or JSONL file.

    The format is sniffed from the content, not the suffix, because ``.json`` files holding one
    object per line are common. In JSONL a broken line is one Reject and reading goes on; a JSON
    list that does not parse cannot be split into rows, so it is one Reject for the whole file.
    """
    name = path.name
    first = _first_line(path)
    if first.startswith("["):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            yield Reject(f"{name}:line {e.lineno}", "malformed_json",
                         f"file is not a valid JSON list: {e.msg} (line {e.lineno}, column {e.colno})")
            return
        except UnicodeDecodeError as e:
            yield Reject(f"{name}:byte {e.start}", "malformed_json", f"file is not UTF-8: {e.reason}")
            return
        for i, record in enumerate(data):
            yield f"{name}:row {i}", record
        return
    if first.startswith("{") and not _parses(first) and _is_one_object(path):
        # A pretty-printed object would otherwise be reported once per line.
        yield Reject(f"{name}:line 1", "malformed_json",
                     "the file holds one JSON object, not a JSON list or JSONL of rows")
        return
    # Bytes, decoded line by line: one line in another encoding is one Reject, not the end of the run.
    with open(path, "rb") as f:
        for lineno, data in enumerate(f, start=1):
            loc = f"{name}:line {lineno}"
            try:
                line = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield Reject(loc, "malformed_json", f"not UTF-8: {e.reason} at byte {e.start}",
                             raw=data.decode("utf-8", "replace").rstrip("\r\n"))
                continue
            if not line.strip():
                continue
            try:
                yield loc, json.loads(line)
            except json.JSONDecodeError as e:
                yield Reject(loc, "malformed_json", f"not valid JSON: {e.msg} (column {e.colno})",
                             raw=line.rstrip("\r\n"))


def convert_records(path: Path, row_of: Callable[[int, str, Any], Row | Reject]) -> Iterator[Row | Reject]:
    """``row_of(index, location, record)`` for each record of ``path``; the file's own Rejects pass through."""
    for n, item in enumerate(iter_records(path)):
        yield item if isinstance(item, Reject) else row_of(n, *item)


def _first_line(path: Path) -> str:
    """The first non-blank line, or just its first character when the file is a JSON list (a
    minified 500K-row list is a single line of hundreds of megabytes)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        while (char := f.read(1)) and char.isspace():
            pass
        return char if char != "{" else char + f.readline()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _is_one_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8-sig")), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def as_text(value: Any) -> str | None:
    """A question/answer field as stripped text; numbers become text (VQA-RAD has numeric
    answers). ``None`` for values that are not text at all (lists, dicts, null)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return None


def missing(record: Mapping[str, Any], fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if record.get(f) is None]


def check_record(loc: str, record: Any, required: tuple[str, ...]) -> Reject | None:
    """The record is an object and has every required field, or the Reject saying why not."""
    if not isinstance(record, dict):
        return Reject(loc, "malformed_row", f"expected an object, got {type(record).__name__}", raw=record)
    absent = missing(record, required)
    if absent:
        return Reject(loc, "missing_field", f"missing {', '.join(absent)}", raw=record)
    return None


def image_field(loc: str, record: Mapping[str, Any], key: str) -> str | Reject:
    """The record's image path under ``key``, stripped, or a Reject when it is not a path."""
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        return Reject(loc, "bad_value", f"{key} is not a path: {value!r}", raw=record)
    return value.strip()


def text_fields(record: Mapping[str, Any], loc: str, question_key: str = "question",
                answer_key: str = "answer") -> tuple[str, str] | Reject:
    """Question and answer as text, or the Reject that explains why not."""
    question, answer = as_text(record[question_key]), as_text(record[answer_key])
    if question is None:
        return Reject(loc, "bad_value", f"{question_key} is not text: {record[question_key]!r}",
                      raw=record)
    if answer is None:
        return Reject(loc, "bad_value", f"{answer_key} is not text: {record[answer_key]!r}",
                      raw=record)
    if not question:
        return Reject(loc, "empty_question", f"{question_key} is empty", raw=record)
    if not answer:
        return Reject(loc, "empty_answer", f"{answer_key} is empty", raw=record)
    return question, answer


def text_and_image(loc: str, record: Mapping[str, Any], image_key: str) -> tuple[str, str, str] | Reject:
    """Question, answer and image path of a checked flat VQA record, or the first Reject."""
    qa = text_fields(record, loc)
    if isinstance(qa, Reject):
        return qa
    image = image_field(loc, record, image_key)
    if isinstance(image, Reject):
        return image
    return (*qa, image)


def flat_vqa_row(loc: str, record: Any, *, required: tuple[str, ...], image_key: str, image_dir: str,
                 row_id: Callable[[Mapping[str, Any]], str], source: str, meta_keys: tuple[str, ...],
                 keep: Callable[[str, Mapping[str, Any]], Reject | None] | None = None) -> Row | Reject:
    """The row of a flat record (question, answer, one image path, labels as fields), or the first Reject.

    ``keep``, when given, sees the record once its fields are there and may leave it out (a filter reject)."""
    problem = check_record(loc, record, required) or (keep(loc, record) if keep else None)
    if problem:
        return problem
    fields = text_and_image(loc, record, image_key)
    if isinstance(fields, Reject):
        return fields
    question, answer, image = fields
    return make_row(row_id(record), join_image(image_dir, image), question, answer,
                    answer_type=record.get("answer_type"), source=source,
                    meta={k: record[k] for k in meta_keys if k in record})


def norm_path(path: str) -> str:
    """Forward slashes and no leading ``./``; Windows-made copies use backslashes."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def join_image(image_dir: str, name: str) -> str:
    """``image_dir/name`` for a relative name; absolute names are left for validation to judge."""
    name = norm_path(name)
    if not image_dir or name.startswith("/") or re.match(r"^[A-Za-z]:/", name):
        return name
    return f"{norm_path(image_dir).rstrip('/')}/{name}"


_ROLE_ALIASES = {"human": HUMAN, "user": HUMAN, "gpt": GPT, "assistant": GPT}


def llava_row(record: Any, loc: str, *, source: str, image_dir: str, row_id: str | None,
              image_required: bool, meta: dict[str, Any]) -> Row | Reject:
    """A unified row from a LLaVA-format record ``{id, image, conversations}``.

    Only what cannot be represented is rejected here; the shape of the conversation (roles
    alternating, answers non-empty, placeholder counts) is judged by the row checks, so the
    same rules hold for every dataset.
    """
    if not isinstance(record, dict):
        return Reject(loc, "malformed_row", f"expected an object, got {type(record).__name__}",
                      raw=record)
    absent = [f for f in ("conversations",) if record.get(f) is None]
    if row_id is None:
        absent.insert(0, "id")
    if image_required and record.get("image") is None:
        absent.append("image")
    if absent:
        return Reject(loc, "missing_field", f"missing {', '.join(absent)}", raw=record)
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        return Reject(loc, "bad_value", "conversations is not a non-empty list", raw=record)
    conversations = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            return Reject(loc, "bad_value", f"turn {k} is not {{from, value: str}}", raw=record)
        role = _ROLE_ALIASES.get(str(turn["from"]).lower(), str(turn["from"]))
        conversations.append({"from": role, "value": turn["value"]})
    image = record.get("image")
    if isinstance(image, str):
        images: list[str] = [join_image(image_dir, image)]
    elif isinstance(image, list) and all(isinstance(p, str) for p in image):
        images = [join_image(image_dir, p) for p in image]
    elif image is None:
        images = []
    else:
        return Reject(loc, "bad_value", f"image is not a path or list of paths: {image!r}",
                      raw=record)
    # LLaVA's own loader puts the image in front of the first question when a row names an image
    # but has no placeholder; do the same, but never add one where some are already present.
    if images and not any(IMAGE_TOKEN in t["value"] for t in conversations):
        first = next((t for t in conversations if t["from"] == HUMAN), None)
        if first is not None:
            first["value"] = (IMAGE_TOKEN + "\n") * len(images) + first["value"]
    return {
        "id": row_id,
        "image": None if not images else images[0] if isinstance(image, str) else images,
        "conversations": conversations,
        "answer_type": None,
        "category": None,
        "source": source,
        "meta": meta,
    }
