"""Row checks: is a row something training can read?

A check is a function ``check(row, root) -> Problem | None``. :func:`first_problem` runs a list of
them on a row, in order, and returns the first failure, so a later check is one more function
appended to the list::

    checks = default_checks(require_category=True)
    checks.insert(-1, my_check)     # before the duplicate-id check
    problem = first_problem(row, root, checks)

Checks run cheapest first and the first failure decides, so an image that is missing is reported
as missing, not also as undecodable. The duplicate-id check is last (insert new checks before
it), so an id is taken only by a row that is kept. Large images are never rejected for their
size. :func:`default_checks` need no tokenizer or processor; :func:`check_template_images` and
:func:`make_special_token_check` are the checks ``medvl.prepare`` adds with the model's processor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import UnidentifiedImageError

from medvl.data.chat import to_messages
from medvl.data.converters._common import Row
from medvl.data.format import GPT, HUMAN, IMAGE_TOKEN, image_paths
from medvl.data.images import UnsupportedMode, load_rgb
from medvl.data.taxonomy import ANSWER_TYPES, label_problem


@dataclass(frozen=True)
class Problem:
    """Why a row fails a check: a reason code (see ``converters.REASONS``) and one line of detail."""

    reason: str
    message: str


Check = Callable[[Row, Path], "Problem | None"]


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
    if row.get("category") is not None and not isinstance(row["category"], str):
        return Problem("bad_field_type", f"category must be text or null, got {row['category']!r}")
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
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            # PIL raises SyntaxError from some format plugins for corrupt headers.
            return image_problem(rel, e)
    return None


def image_problem(rel: str, exc: BaseException) -> Problem:
    """The reject of an image that failed to load: its pixel mode (UnsupportedMode) or anything else."""
    if isinstance(exc, UnsupportedMode):
        return Problem("image_mode_unsupported", f"{rel!r}: {exc}")
    return Problem("image_unreadable", f"{rel!r}: {type(exc).__name__}: {exc}")


def make_category_check(categories: Mapping[str, str] | None = None, *, required: bool = True) -> Check:
    """A row's category is one the taxonomy declares, with the answer type the row gives (``bad_category``).

    ``categories``: the data config's taxonomy (None: the built-in 12). ``required``: evaluation splits report
    per category, so each of their rows must carry one (``missing_category``).
    """

    def check_category(row: Row, root: Path) -> Problem | None:
        if row.get("category") is None:
            if required:
                return Problem("missing_category", "no category (required in validation/test splits)")
            return None
        problem = label_problem(categories, row["category"], row.get("answer_type"))
        return None if problem is None else Problem("bad_category", problem)

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
                   follow_symlinks: bool = False, categories: Mapping[str, str] | None = None) -> list[Check]:
    """The checks of one split, in order (a fresh duplicate-id memory each call).

    Args:
        require_category: also require a category (validation and test splits).
        categories: the taxonomy a given category must belong to (``data.categories``; None: the built-in 12).
        decode_images: decode every image; off, only paths and existence are checked.
        follow_symlinks: accept images reached through symbolic links that leave root
            (``data.follow_symlinks``).
    """
    checks: list[Check] = [check_fields, check_roles, check_text, check_placeholders,
                           make_category_check(categories, required=require_category)]
    checks.append(make_image_files_check(follow_symlinks) if follow_symlinks else check_image_files)
    if decode_images:
        checks.append(check_images_decode)
    checks.append(make_duplicate_id_check())
    return checks


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


def first_problem(row: Any, root: Path, checks: Sequence[Check]) -> Problem | None:
    """The first failing check's problem, or None when the row passes every check.

    A row that is not a JSON object is ``malformed_row``; a check that raises (a row shaped in a way
    no check foresaw) is ``bad_value`` naming the check, so one bad row never stops a run.
    """
    if not isinstance(row, dict):
        return Problem("malformed_row", f"expected an object, got {type(row).__name__}")
    for check in checks:
        try:
            problem = check(row, root)
        except Exception as exc:  # noqa: BLE001 - one bad row never stops the run
            problem = Problem("bad_value", f"check {getattr(check, '__name__', check)} failed: "
                              f"{type(exc).__name__}: {exc}")
        if problem is not None:
            return problem
    return None
