"""Row checks that need no tokenizer or processor, and the one image loader everything uses.

A check is a function ``check(row, root) -> Problem | None``. :func:`validate_rows` runs a list
of them on every row and yields the row, or a Reject carrying the first failing check's reason,
so a later check (the processor-based token length) is one more function appended to the list::

    checks = default_checks(require_category=True)
    checks.insert(-1, make_token_length_check(processor, max_length))   # later, elsewhere
    rows, rejects = partition(validate_rows(rows, root, checks, source="test.jsonl"))

Checks run cheapest first and the first failure decides, so an image that is missing is reported
as missing, not also as undecodable. The duplicate-id check is last (insert new checks before
it), so an id is taken only by a row that is kept. Large images are never rejected for their
size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medvl.data.converters._common import Reject, Row
from medvl.data.format import GPT, HUMAN, IMAGE_TOKEN, image_paths
from medvl.data.taxonomy import ANSWER_TYPES, CATEGORIES


@dataclass(frozen=True)
class Problem:
    """Why a row fails a check: a reason code (see ``converters.REASONS``) and one line of detail."""

    reason: str
    message: str


Check = Callable[[Row, Path], "Problem | None"]

_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa")


class UnsupportedMode(ValueError):
    """The image decoded, but PIL cannot convert its pixel mode to RGB."""


# --- image loading -------------------------------------------------------------------------


@contextlib.contextmanager
def no_pixel_limit() -> Iterator[None]:
    # Whole-slide pathology and big radiographs exceed PIL's decompression-bomb limit; they are
    # wanted, and the processor resizes them, so the limit is lifted while our own files load.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image in any of the modes medical images come in to 8-bit RGB.

    16-bit (``I;16``), 32-bit (``I``) and float (``F``) grey images are scaled from their own
    min..max to 0..255. PIL's ``convert("L")`` would clip them at 255 instead (a 12-bit CT or
    X-ray turns almost white), and dividing by 257 would leave 12-bit data nearly black.
    Transparency is composited onto white, as qwen-vl-utils does for the model's own inputs.

    Raises:
        UnsupportedMode: PIL cannot convert the mode.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_BIT_DEPTH:
        pixels = np.asarray(image, dtype=np.float64)
        lo, hi = float(pixels.min()), float(pixels.max())
        scaled = (pixels - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(pixels)
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _WITH_ALPHA:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except ValueError as e:
        raise UnsupportedMode(f"mode {mode}: {e}") from e


def load_rgb(path: str | Path) -> Image.Image:
    """Open, fully decode and convert an image file to RGB (see :func:`to_rgb`)."""
    with no_pixel_limit(), Image.open(path) as image:
        image.load()
        return to_rgb(image)


# --- checks --------------------------------------------------------------------------------


def check_fields(row: Row, root: Path) -> Problem | None:
    """Required fields exist and have the unified format's types."""
    absent = [k for k in ("id", "conversations") if row.get(k) is None]
    absent += [k for k in ("image",) if k not in row]
    if absent:
        return Problem("missing_field", f"missing {', '.join(absent)}")
    if not isinstance(row["id"], str) or not row["id"].strip():
        return Problem("bad_field_type", f"id must be a non-empty string, got {row['id']!r}")
    image = row["image"]
    if not (image is None or (isinstance(image, str) and image)
            or (isinstance(image, list) and all(isinstance(p, str) and p for p in image))):
        return Problem("bad_field_type", f"image must be a path, a list of paths or null, got {image!r}")
    turns = row["conversations"]
    if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
            for t in turns):
        return Problem("bad_field_type", "conversations must be a list of {from: str, value: str}")
    if row.get("answer_type") is not None and row["answer_type"] not in ANSWER_TYPES:
        return Problem("bad_field_type", f"answer_type must be CLOSED, OPEN or null, got {row['answer_type']!r}")
    if row.get("category") is not None and row["category"] not in CATEGORIES:
        return Problem("bad_field_type", f"category {row['category']!r} is not a taxonomy id")
    if row.get("meta") is not None and not isinstance(row["meta"], dict):
        return Problem("bad_field_type", "meta must be an object")
    return None


def check_roles(row: Row, root: Path) -> Problem | None:
    """Turns alternate human, gpt, human, ... and the last one is gpt's."""
    roles = [t["from"] for t in row["conversations"]]
    if not roles:
        return Problem("bad_roles", "no turns")
    for k, role in enumerate(roles):
        expected = HUMAN if k % 2 == 0 else GPT
        if role != expected:
            return Problem("bad_roles", f"turn {k} is from {role!r}, expected {expected!r}")
    if roles[-1] != GPT:
        return Problem("bad_roles", "the last turn is not gpt's answer")
    return None


def check_text(row: Row, root: Path) -> Problem | None:
    """No empty question (beyond its placeholders) and no empty answer."""
    for k, turn in enumerate(row["conversations"]):
        text = turn["value"].replace(IMAGE_TOKEN, "").strip() if turn["from"] == HUMAN else turn["value"].strip()
        if not text:
            reason = "empty_question" if turn["from"] == HUMAN else "empty_answer"
            return Problem(reason, f"turn {k} ({turn['from']}) is empty")
    return None


def check_placeholders(row: Row, root: Path) -> Problem | None:
    """As many ``<image>`` placeholders, over all turns, as the row has images."""
    n_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in row["conversations"])
    n_images = len(image_paths(row))
    if n_tokens != n_images:
        return Problem("placeholder_mismatch", f"{n_tokens} {IMAGE_TOKEN} placeholder(s) for {n_images} image(s)")
    return None


def resolve_image(root: Path, rel: str, *, follow_symlinks: bool = False) -> Path | None:
    """The image's real path if it lies inside root, else None.

    By default "inside" is judged after ``..`` and symbolic links are resolved. With ``follow_symlinks``
    links inside root may lead anywhere (shared datasets are often laid out as folders of links), so the
    path as written must stay inside root: no ``..`` at all, and an absolute path only below root.
    """
    real_root = root.resolve()
    candidate = Path(rel) if Path(rel).is_absolute() else real_root / rel
    if follow_symlinks and not _written_inside(root, rel):
        return None
    try:
        real = candidate.resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes
        return None
    return real if follow_symlinks or real.is_relative_to(real_root) else None


def _written_inside(root: Path, rel: str) -> bool:
    path = Path(rel)
    if ".." in path.parts:
        return False
    return not path.is_absolute() or path.is_relative_to(root.absolute()) or path.is_relative_to(root.resolve())


def _outside_root_message(rel: str, root: Path) -> str:
    if _written_inside(root, rel):
        return (f"{rel!r} leads outside {root} through a symbolic link; set data.follow_symlinks=true "
                f"if the linked folder is meant")
    return f"{rel!r} resolves outside {root} ('..' or an absolute path)"


def make_image_files_check(follow_symlinks: bool = False) -> Check:
    """Every image path stays inside root (see :func:`resolve_image`) and names an existing file."""

    def check_image_files(row: Row, root: Path) -> Problem | None:
        for rel in image_paths(row):
            real = resolve_image(root, rel, follow_symlinks=follow_symlinks)
            if real is None:
                return Problem("image_outside_root", _outside_root_message(rel, root))
            if not real.is_file():
                return Problem("image_missing", f"{rel!r} does not exist below {root}")
        return None

    return check_image_files


#: The default: symbolic links must stay inside root.
check_image_files = make_image_files_check()


def check_images_decode(row: Row, root: Path) -> Problem | None:
    """Every image decodes and converts to RGB through :func:`load_rgb`, the loader training uses.
    Runs after the image-files check, which has vouched for the paths."""
    for rel in image_paths(row):
        try:
            load_rgb(Path(root) / rel)
        except UnsupportedMode as e:
            return Problem("image_mode_unsupported", f"{rel!r}: {e}")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            # PIL raises SyntaxError from some format plugins for corrupt headers.
            return Problem("image_unreadable", f"{rel!r}: {type(e).__name__}: {e}")
    return None


def make_category_check() -> Check:
    """Evaluation splits report per category, so each of their rows must carry one."""

    def check_category(row: Row, root: Path) -> Problem | None:
        if row.get("category") is None:
            return Problem("missing_category", "no category (required in validation/test splits)")
        return None

    return check_category


def make_duplicate_id_check() -> Check:
    """A check that remembers ids across the rows it sees: one per split, run last."""
    seen: dict[str, int] = {}

    def check_duplicate_id(row: Row, root: Path) -> Problem | None:
        if row["id"] in seen:
            return Problem("duplicate_id", f"id {row['id']!r} already used by kept row {seen[row['id']]}")
        seen[row["id"]] = len(seen)
        return None

    return check_duplicate_id


def default_checks(*, require_category: bool = False, decode_images: bool = True,
                   follow_symlinks: bool = False) -> list[Check]:
    """The checks of one split, in order (a fresh duplicate-id memory each call).

    Args:
        require_category: also require a category (validation and test splits).
        decode_images: decode every image; off, only paths and existence are checked.
        follow_symlinks: accept images reached through symbolic links that leave root
            (``data.follow_symlinks``).
    """
    checks: list[Check] = [check_fields, check_roles, check_text, check_placeholders]
    if require_category:
        checks.append(make_category_check())
    checks.append(make_image_files_check(follow_symlinks) if follow_symlinks else check_image_files)
    if decode_images:
        checks.append(check_images_decode)
    checks.append(make_duplicate_id_check())
    return checks


def validate_rows(rows: Iterable[Any], root: str | Path, checks: Sequence[Check] | None = None,
                  *, source: str = "rows") -> Iterator[Row | Reject]:
    """Yield each row that passes every check, or a Reject with the first failing reason.

    ``source`` names the input in Reject locations (``"test.jsonl:row 3"``, 0-based).
    """
    root = Path(root)
    checks = default_checks() if checks is None else checks
    for i, row in enumerate(rows):
        loc = f"{source}:row {i}"
        if not isinstance(row, dict):
            yield Reject(loc, "malformed_row", f"expected an object, got {type(row).__name__}", raw=row)
            continue
        for check in checks:
            problem = check(row, root)
            if problem is not None:
                yield Reject(loc, problem.reason, f"{row.get('id')!r}: {problem.message}", raw=row)
                break
        else:
            yield row
