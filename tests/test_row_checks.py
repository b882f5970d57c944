"""Processor-free row checks: every kind of bad row is fed and its reason checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest
from PIL import Image

import medvl.data.images as images
from medvl.data.format import IMAGE_TOKEN, make_row
from medvl.data.images import UnsupportedMode, load_rgb, to_rgb
from medvl.data.row_checks import Problem, default_checks, first_problem


def good(row_id: str = "r1", image: str | list[str] | None = "img/a.png") -> dict:
    return make_row(row_id, image, "Is the liver normal?", "yes", answer_type="CLOSED", category="closed_yes_no",
                    source="test")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (16, 12), (1, 2, 3)).save(root / "img" / "a.png")
    Image.new("L", (16, 12), 9).save(root / "img" / "b.jpg")
    return root


class Rejected(NamedTuple):
    position: int
    reason: str
    message: str


def check(rows: list, root: Path, checks=None, **kwargs) -> tuple[list[dict], list[Rejected]]:
    """The rows that pass every check, and where and why the others fail, in input order."""
    checks = default_checks(**kwargs) if checks is None else checks
    kept, rejects = [], []
    for k, row in enumerate(rows):
        problem = first_problem(row, root, checks)
        if problem is None:
            kept.append(row)
        else:
            rejects.append(Rejected(k, problem.reason, problem.message))
    return kept, rejects


def only_reason(row, root: Path, **kwargs) -> str:
    kept, rejects = check([row], root, **kwargs)
    assert kept == [] and len(rejects) == 1
    return rejects[0].reason


def with_turns(*turns: tuple[str, str], image="img/a.png") -> dict:
    row = good(image=image)
    row["conversations"] = [{"from": who, "value": text} for who, text in turns]
    return row


# --- good rows -------------------------------------------------------------------------------


def test_good_rows_pass(root: Path) -> None:
    multi = with_turns(("human", f"{IMAGE_TOKEN}\nWhat?"), ("gpt", "A"), ("human", "And?"), ("gpt", "B"))
    two = make_row("r3", ["img/a.png", "img/b.jpg"], "Compare.", "same")
    text_only = make_row("r4", None, "What is CT?", "Computed tomography")
    absolute_inside = good("r5", str((root / "img" / "a.png").resolve()))
    rows = [good(), multi | {"id": "r2"}, two, text_only, absolute_inside]
    kept, rejects = check(rows, root, require_category=False)
    assert rejects == [] and kept == rows


def test_symlink_inside_root_is_fine(root: Path) -> None:
    os.symlink(root / "img" / "a.png", root / "img" / "link.png")
    assert check([good(image="img/link.png")], root)[1] == []


# --- every kind of bad row -------------------------------------------------------------------


def test_non_object_row(root: Path) -> None:
    assert only_reason(["not", "a", "row"], root) == "malformed_row"


@pytest.mark.parametrize("field", ["id", "conversations", "image"])
def test_missing_field(root: Path, field: str) -> None:
    row = good()
    del row[field]
    assert only_reason(row, root) == "missing_field"


@pytest.mark.parametrize(
    "patch",
    [{"id": 7}, {"id": " "}, {"image": 3}, {"image": ["img/a.png", 5]}, {"conversations": [{"from": "human"}]},
     {"conversations": "hi"}, {"answer_type": "closed"}, {"category": 7}, {"meta": []}],
)
def test_bad_field_type(root: Path, patch: dict) -> None:
    assert only_reason(good() | patch, root) == "bad_field_type"


@pytest.mark.parametrize(
    "turns",
    [
        [("gpt", "yes"), ("human", f"{IMAGE_TOKEN}\nq")],  # starts with the answer
        [("human", f"{IMAGE_TOKEN}\nq"), ("human", "q2"), ("gpt", "a")],  # two humans in a row
        [("human", f"{IMAGE_TOKEN}\nq"), ("gpt", "a"), ("human", "q2")],  # ends on a question
        [("human", f"{IMAGE_TOKEN}\nq"), ("system", "a")],  # unknown role
        [],
    ],
)
def test_bad_roles(root: Path, turns) -> None:
    assert only_reason(with_turns(*turns), root) == "bad_roles"


def test_empty_question_and_answer(root: Path) -> None:
    assert only_reason(with_turns(("human", f"{IMAGE_TOKEN}\n  "), ("gpt", "a")), root) == "empty_question"
    assert only_reason(with_turns(("human", f"{IMAGE_TOKEN}\nq"), ("gpt", " \n")), root) == "empty_answer"
    multi = with_turns(("human", f"{IMAGE_TOKEN}\nq"), ("gpt", "a"), ("human", "q2"), ("gpt", ""))
    assert only_reason(multi, root) == "empty_answer"


@pytest.mark.parametrize(
    ("value", "image"),
    [("no placeholder", "img/a.png"), (f"{IMAGE_TOKEN}{IMAGE_TOKEN} two", "img/a.png"),
     (f"{IMAGE_TOKEN} one", ["img/a.png", "img/b.jpg"]), (f"{IMAGE_TOKEN} text-only row", None)],
)
def test_placeholder_mismatch(root: Path, value: str, image) -> None:
    assert only_reason(with_turns(("human", value), ("gpt", "a"), image=image), root) == "placeholder_mismatch"


def test_placeholder_in_answer_counts(root: Path) -> None:
    row = with_turns(("human", f"{IMAGE_TOKEN} q"), ("gpt", f"see {IMAGE_TOKEN}"))
    assert only_reason(row, root) == "placeholder_mismatch"


@pytest.mark.parametrize("path", ["../../etc/passwd", "img/../../outside.png", "/etc/passwd"])
def test_image_outside_root(root: Path, path: str) -> None:
    (root.parent / "outside.png").write_bytes(b"x")
    assert only_reason(good(image=path), root) == "image_outside_root"


def test_symlink_escaping_root(root: Path) -> None:
    secret = root.parent / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    os.symlink(secret, root / "img" / "escape.png")
    os.symlink(root.parent, root / "up")
    assert only_reason(good(image="img/escape.png"), root) == "image_outside_root"
    assert only_reason(good(image="up/secret.png"), root) == "image_outside_root"


def test_image_missing(root: Path) -> None:
    assert only_reason(good(image="img/nope.png"), root) == "image_missing"
    assert only_reason(good(image="img"), root) == "image_missing"  # a folder is not an image


def test_image_unreadable(root: Path) -> None:
    (root / "img" / "junk.png").write_bytes(b"not an image at all")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "img" / "full.png")
    data = (root / "img" / "full.png").read_bytes()
    (root / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    assert only_reason(good(image="img/junk.png"), root) == "image_unreadable"
    assert only_reason(good(image="img/cut.png"), root) == "image_unreadable"
    # Without decoding, only paths are checked.
    assert check([good(image="img/cut.png")], root, decode_images=False)[1] == []


def test_image_mode_unsupported(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No common file format stores a mode PIL cannot convert; "La" exists only in memory.
    with pytest.raises(UnsupportedMode):
        to_rgb(Image.new("La", (2, 2)))

    def fake_to_rgb(image):
        raise UnsupportedMode("mode XYZ")

    monkeypatch.setattr(images, "to_rgb", fake_to_rgb)
    assert only_reason(good(), root) == "image_mode_unsupported"


def test_missing_category_only_when_required(root: Path) -> None:
    row = good() | {"category": None}
    assert only_reason(row, root, require_category=True) == "missing_category"
    assert check([row], root)[1] == []


@pytest.mark.parametrize("patch", [{"category": "closed_maybe"}, {"category": "closed_yes_no", "answer_type": "OPEN"}])
def test_a_category_outside_the_taxonomy_or_against_the_answer_type_is_bad_category(root: Path, patch: dict) -> None:
    assert only_reason(good() | patch, root) == "bad_category"


def test_duplicate_ids_across_the_split(root: Path) -> None:
    rows = [good("a"), good("b"), good("a"), good("c"), good("b")]
    kept, rejects = check(rows, root)
    assert [r["id"] for r in kept] == ["a", "b", "c"]
    assert [(r.position, r.reason) for r in rejects] == [(2, "duplicate_id"), (4, "duplicate_id")]


def test_rejected_row_does_not_take_its_id(root: Path) -> None:
    rows = [good("a", image="img/nope.png"), good("a")]
    kept, rejects = check(rows, root)
    assert [r["id"] for r in kept] == ["a"] and [r.reason for r in rejects] == ["image_missing"]


def test_mixed_split_counts_and_order(root: Path) -> None:
    rows = [good("1"), good("2", image="../x.png"), good("3"), with_turns(("gpt", "a")) | {"id": "4"}, good("1")]
    kept, rejects = check(rows, root)
    assert [r["id"] for r in kept] == ["1", "3"]
    assert [r.reason for r in rejects] == ["image_outside_root", "bad_roles", "duplicate_id"]
    assert rejects[0].position == 1 and "'../x.png'" in rejects[0].message


def test_more_checks_can_be_appended(root: Path) -> None:
    def too_long(row, root):  # stands in for the processor-based token-length check
        return Problem("too_long", "300 tokens > 256") if row["id"] == "big" else None

    checks = default_checks()
    checks.insert(-1, too_long)
    kept, rejects = check([good("big"), good("small")], root, checks)
    assert [r["id"] for r in kept] == ["small"] and [r.reason for r in rejects] == ["too_long"]


def test_a_check_that_raises_is_a_bad_value_naming_it(root: Path) -> None:
    def shaky(row, root):
        raise KeyError("meta")

    problem = first_problem(good(), root, [shaky])
    assert problem == Problem("bad_value", "check shaky failed: KeyError: 'meta'")


def test_large_images_are_never_rejected(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (300, 300)).save(root / "img" / "big.png")
    # Shrink PIL's decompression-bomb limit so that 90,000 pixels counts as huge.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert check([good(image="img/big.png")], root)[1] == []
    assert load_rgb(root / "img" / "big.png").size == (300, 300)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is restored afterwards
