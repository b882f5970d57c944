"""Datasets as people download them: Parquet files, or a folder the ``datasets`` library saved.

``source`` (``data.source``) is one of:

- a folder written by ``save_to_disk``: ``dataset_dict.json`` and a folder per split, or one split's folder
  (``state.json``); each holds the Arrow IPC stream files its ``state.json`` lists (``data-00000-of-00001.arrow``);
- Parquet (or Arrow) files: one file, or a folder of them at any depth, named as the Hub names shards
  (``data/train-00000-of-00002.parquet``, or ``default/train/0000.parquet`` in the Hub's converted tree).
  A file's split is the split word in its name (``train``; ``validation``, ``valid``, ``val``, ``dev``;
  ``test``), else in its folder's name; ``splits={test: my.parquet}`` names a split's files outright.

``columns`` (``data.columns``) names the column of each field: ``question``, ``answer``, ``image`` (null: rows
without an image) and, where the export has them, ``answer_type``, ``category``, ``id`` and ``lang`` (rows in
another language than ``data.lang`` are ``lang_filtered``). A column that is not there stops the run in one
line naming it and the columns that are. Every other column with plain values is kept in ``meta`` (Slake's
``content_type`` and ``modality`` feed its categories and breakdowns), and ``dataset`` is the rows' ``source``
(``vqa_rad``, ``slake``...), which picks that dataset's label table in :mod:`medvl.data.categorize`.

An image value is the ``datasets`` Image struct ``{bytes, path}``, raw bytes or a path, or a list of them
(several images). Embedded bytes are written unchanged, once, to ``<root>/<image_dir>/<sha256[:20]>.<ext>``:
named by their content, so an image shared by many questions (VQA-RAD: 2,244 questions on 314 images) is one
file, and a rerun writes nothing. Here they are only identified from their header; the row checks decode them,
once. Bytes that are not an image are a ``bad_image_data`` Reject. Paths are read in place, relative to
``root`` as with every converter. ``conf/data/hf.yaml`` sets ``root`` to ``data.dir``, so embedded images land
in the prepared folder and training finds them there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from medvl.data.converters._common import SPLITS, Reject, Row, check_record, norm_path, text_fields

# The one reading of given labels (answer type, taxonomy category) for users' own data.
from medvl.data.converters.llava import _given_labels
from medvl.data.format import make_row

#: Fields of the column map, and the columns they default to (those of the common Hub exports).
FIELDS = ("question", "answer", "image", "answer_type", "category", "id", "lang")
DEFAULT_COLUMNS = {"question": "question", "answer": "answer", "image": "image"}
#: Words in a file or folder name that say its split.
SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp"}
#: Rows turned into Python objects at a time: a shard's record batch can hold hundreds of megabytes of images.
_ROWS_AT_ONCE = 64


def convert_hf(root: Path, split: str, *, source: str | None = None,
               columns: Mapping[str, str | None] | None = None, lang: str = "en", dataset: str = "hf",
               image_dir: str = "images", splits: Mapping[str, str] | None = None,
               categories: Mapping[str, str] | None = None) -> Iterator[Row | Reject]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not source:
        raise _error("data=hf reads data.source: add data.source=<a save_to_disk folder, a Parquet file or a "
                     "folder of them> to the command")
    src = Path(source)
    if not src.exists():
        raise _error(f"data.source={src} does not exist")
    column = column_map(columns)
    found = split_files(src, splits)
    if not found.get(split):
        raise FileNotFoundError(
            f"hf: no {split} split in {src} (found: {', '.join(found) or 'none'}; a file's split is the word "
            f"train, validation or test in its name or folder), or name its files: "
            f"data.options.splits={{{split}: <file or folder>}}")
    reader = _SplitReader(root, split, src, column, lang, dataset, norm_path(image_dir).strip("/") or ".",
                          categories)
    for path in found[split]:
        yield from reader.rows(path)


def column_map(columns: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """``data.columns`` over the defaults, checked: field -> column name, or None where the export has none."""
    given = dict(columns or {})
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise _error(f"data.columns has no field {', '.join(unknown)}; its fields are {', '.join(FIELDS)}")
    mapping = {field: given.get(field, DEFAULT_COLUMNS.get(field)) for field in FIELDS}
    for field in ("question", "answer"):
        if not mapping[field]:
            raise _error(f"data.columns.{field} must name a column")
    return {field: (str(name) if name else None) for field, name in mapping.items()}


def split_files(source: Path, splits: Mapping[str, str] | None = None) -> dict[str, list[Path]]:
    """Split -> its data files, in order (see the module's docstring)."""
    base = source if source.is_dir() else source.parent
    if splits:
        out: dict[str, list[Path]] = {}
        for name, where in splits.items():
            split = SPLIT_WORDS.get(str(name).lower())
            if split is None:
                raise _error(f"data.options.splits: {name!r} is not a split ({', '.join(SPLITS)})")
            out[split] = _data_files(base / where) if (base / where).exists() else sorted(base.glob(str(where)))
            if not out[split]:
                raise _error(f"data.options.splits.{name}={where!r}: no Parquet or Arrow file there below {base}")
        return out
    if source.is_file():
        return _by_split_word([source])
    if (source / "dataset_dict.json").is_file():
        names = json.loads((source / "dataset_dict.json").read_text(encoding="utf-8")).get("splits") or []
        return {SPLIT_WORDS[n.lower()]: _saved_files(source / n) for n in names if n.lower() in SPLIT_WORDS}
    if (source / "state.json").is_file():
        state = json.loads((source / "state.json").read_text(encoding="utf-8"))
        split = _split_word(str(state.get("_split") or "")) or _split_word(source.name)
        return {split: _saved_files(source)} if split else {}
    return _by_split_word(sorted(source.rglob("*.parquet")) or sorted(source.rglob("*.arrow")))


def _split_word(name: str) -> str | None:
    found = {SPLIT_WORDS[word] for word in re.split(r"[-_.\s]+", name.lower()) if word in SPLIT_WORDS}
    return found.pop() if len(found) == 1 else None


def _by_split_word(files: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in files:
        split = _split_word(path.stem) or _split_word(path.parent.name)
        if split is not None:
            out.setdefault(split, []).append(path)
    return out


def _saved_files(folder: Path) -> list[Path]:
    """The Arrow files of one ``save_to_disk`` split, in the order its ``state.json`` lists them."""
    try:
        listed = json.loads((folder / "state.json").read_text(encoding="utf-8"))["_data_files"]
        return [folder / entry["filename"] for entry in listed]
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(folder.glob("*.arrow"))


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "state.json").is_file():
        return _saved_files(path)
    return sorted(path.rglob("*.parquet")) or sorted(path.rglob("*.arrow"))


class _SplitReader:
    """One split's rows: their running number (the id where the export has none) and the images written so far."""

    def __init__(self, root: Path, split: str, source: Path, column: dict[str, str | None], lang: str,
                 dataset: str, image_dir: str, categories: Mapping[str, str] | None = None):
        self.root, self.split, self.source, self.column = root, split, source, column
        self.lang, self.dataset, self.image_dir = lang, dataset, image_dir
        self.categories = categories  # the data config's taxonomy; None: the built-in 12
        self.n = 0
        self.written: dict[str, str] = {}  # content hash -> relative path
        self.paths_checked = False

    def rows(self, path: Path) -> Iterator[Row | Reject]:
        base = self.source if self.source.is_dir() else self.source.parent
        where = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name
        k = 0
        for record in _records(path, where, self.column):
            yield self.row(f"{where}:row {k}", record)
            k += 1
            self.n += 1

    def row(self, loc: str, record: dict[str, Any]) -> Row | Reject:
        column = self.column
        raw = _printable(record)
        filtering = column["lang"] is not None and self.lang != "all"
        required = [column[f] for f in ("question", "answer", "image", "id") if column[f]]
        problem = check_record(loc, raw, tuple(required + ([column["lang"]] if filtering else [])))
        if problem:
            return problem
        if filtering and record[column["lang"]] != self.lang:
            return Reject(loc, "lang_filtered", f"{column['lang']} {record[column['lang']]!r} is not {self.lang!r}",
                          raw=raw)
        qa = text_fields(raw, loc, column["question"], column["answer"])
        if isinstance(qa, Reject):
            return qa
        labels = _given_labels({f: record[column[f]] if column[f] else None for f in ("answer_type", "category")},
                               loc, self.categories)
        if isinstance(labels, Reject):
            return Reject(loc, labels.reason, f"{labels.message} (columns {column['answer_type']}, "
                          f"{column['category']})", raw=raw)
        image = self.images(loc, record[column["image"]], raw) if column["image"] else None
        if isinstance(image, Reject):
            return image
        row_id = str(record[column["id"]]).strip() if column["id"] else f"{self.dataset}-{self.split}-{self.n}"
        used = {column["question"], column["answer"], column["image"]}
        meta = {key: value for key, value in record.items() if key not in used and _plain(value)}
        return make_row(row_id, image, *qa, answer_type=labels[0], category=labels[1], source=self.dataset,
                        meta=meta)

    def images(self, loc: str, value: Any, raw: dict[str, Any]) -> str | list[str] | Reject:
        name = self.column["image"]
        values = value if isinstance(value, list) else [value]
        if not values:
            return Reject(loc, "missing_field", f"{name} is an empty list", raw=raw)
        paths = []
        for item in values:
            data, path = _bytes_or_path(item)
            if data is not None:
                rel = self.store(data)
                if rel is None:
                    return Reject(loc, "bad_image_data", f"{name} holds {len(data)} bytes that are not an image "
                                  f"(they begin {data[:8]!r})", raw=raw)
            elif path:
                rel = self.in_place(norm_path(path))
            else:
                return Reject(loc, "missing_field" if item is None or isinstance(item, dict) else "bad_value",
                              f"{name} holds no image bytes and no path: {_printable(item)!r}", raw=raw)
            paths.append(rel)
        return paths if isinstance(value, list) else paths[0]

    def store(self, data: bytes) -> str | None:
        """Write embedded image bytes below root, once; their path relative to root, or None if not an image."""
        digest = hashlib.sha256(data).hexdigest()[:20]
        if digest in self.written:
            return self.written[digest]
        try:
            with Image.open(io.BytesIO(data)) as image:  # the header only: no pixel is decoded here
                fmt = image.format or ""
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
        rel = f"{self.image_dir}/{digest}{_EXTENSIONS.get(fmt, '.' + fmt.lower())}"
        out = self.root / rel
        if not (out.is_file() and out.stat().st_size == len(data)):
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a stopped run leaves no half-written image
            tmp.write_bytes(data)
            os.replace(tmp, out)
        self.written[digest] = rel
        return rel

    def in_place(self, path: str) -> str:
        """A path read in place. The first of a split is looked for: paths relative to the export's folder
        while ``data.root`` is still the prepared folder are one line saying which root to set, not a split
        of image_missing rejects."""
        if not self.paths_checked:
            self.paths_checked = True
            given = Path(path)
            if not (given if given.is_absolute() else self.root / given).exists():
                base = self.source if self.source.is_dir() else self.source.parent
                there = given if given.is_absolute() else base / given
                if there.exists():
                    folder = given.parent if given.is_absolute() else base
                    raise _error(f"data.columns.image={self.column['image']} holds paths ({path!r}) that are not "
                                 f"below data.root={self.root}: add data.root={folder} (a folder they are below)")
        return path


def _records(path: Path, where: str, column: dict[str, str | None]) -> Iterator[dict[str, Any]]:
    """The rows of one Parquet or Arrow file as dicts, after checking that the mapped columns are there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            schema, batches = parquet.schema_arrow, parquet.iter_batches(batch_size=_ROWS_AT_ONCE)
        else:
            schema, batches = _arrow_batches(pa, path)
        absent = [(field, name) for field, name in column.items() if name and name not in schema.names]
        if absent:
            field, name = absent[0]
            raise _error(f"data.columns.{field}={name!r} is not a column of {where}; its columns: "
                         f"{', '.join(schema.names)}")
        for batch in batches:
            for start in range(0, batch.num_rows, _ROWS_AT_ONCE):
                yield from batch.slice(start, _ROWS_AT_ONCE).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise _error(f"hf: cannot read {path}: {type(e).__name__}: {e}") from None


def _arrow_batches(pa, path: Path):
    """save_to_disk writes Arrow IPC streams (datasets' ArrowWriter); a Feather v2 / IPC file reads too."""
    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)
        return reader.schema, iter(reader)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def _bytes_or_path(value: Any) -> tuple[bytes | None, str | None]:
    if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
        return (bytes(data) if data else None), (path if isinstance(path, str) else None)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    return None, (value if isinstance(value, str) and value.strip() else None)


def _printable(value: Any) -> Any:
    """A value for a reject line: bytes become their length, not megabytes of escapes."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _plain(value: Any) -> bool:
    """Kept in meta: JSON values only (not bytes, dates or other Arrow objects)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _error(message: str) -> Exception:
    from medvl.data.converters import ConverterError  # the package's error; the package imports this module

    return ConverterError(message)
