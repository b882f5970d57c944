"""Processor-free row checks: every kind of bad row is fed and its reason checked, and load_rgb
converts the pixel modes medical images come in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medvl.data.validate_rows as vr
from medvl.data.converters import partition
from medvl.data.format import IMAGE_TOKEN, make_row
from medvl.data.validate_rows import Problem, UnsupportedMode, default_checks, load_rgb, to_rgb, validate_rows


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


def check(rows: list, root: Path, **kwargs) -> tuple[list[dict], list]:
    kept, rejects = partition(validate_rows(rows, root, default_checks(**kwargs), source="t.jsonl"))
    assert len(kept) + len(rejects) == len(rows)
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
     {"conversations": "hi"}, {"answer_type": "closed"}, {"category": "closed_maybe"}, {"meta": []}],
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

    monkeypatch.setattr(vr, "to_rgb", fake_to_rgb)
    assert only_reason(good(), root) == "image_mode_unsupported"


def test_missing_category_only_when_required(root: Path) -> None:
    row = good() | {"category": None}
    assert only_reason(row, root, require_category=True) == "missing_category"
    assert check([row], root)[1] == []


def test_duplicate_ids_across_the_split(root: Path) -> None:
    rows = [good("a"), good("b"), good("a"), good("c"), good("b")]
    kept, rejects = check(rows, root)
    assert [r["id"] for r in kept] == ["a", "b", "c"]
    assert [(r.source, r.reason) for r in rejects] == [("t.jsonl:row 2", "duplicate_id"),
                                                       ("t.jsonl:row 4", "duplicate_id")]


def test_rejected_row_does_not_take_its_id(root: Path) -> None:
    rows = [good("a", image="img/nope.png"), good("a")]
    kept, rejects = check(rows, root)
    assert [r["id"] for r in kept] == ["a"] and [r.reason for r in rejects] == ["image_missing"]


def test_mixed_split_counts_and_order(root: Path) -> None:
    rows = [good("1"), good("2", image="../x.png"), good("3"), with_turns(("gpt", "a")) | {"id": "4"}, good("1")]
    kept, rejects = check(rows, root)
    assert [r["id"] for r in kept] == ["1", "3"]
    assert [r.reason for r in rejects] == ["image_outside_root", "bad_roles", "duplicate_id"]
    assert rejects[0].raw is rows[1] and "'2'" in rejects[0].message


def test_more_checks_can_be_appended(root: Path) -> None:
    def too_long(row, root):  # stands in for the processor-based token-length check
        return Problem("too_long", "300 tokens > 256") if row["id"] == "big" else None

    checks = default_checks()
    checks.insert(-1, too_long)
    kept, rejects = partition(validate_rows([good("big"), good("small")], root, checks))
    assert [r["id"] for r in kept] == ["small"] and [r.reason for r in rejects] == ["too_long"]


# --- load_rgb --------------------------------------------------------------------------------


def saved(tmp_path: Path, image: Image.Image, name: str) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def test_load_rgb_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    # A 12-bit radiograph stored in 16 bits: 0..4095.
    pixels = np.tile(np.arange(4096, dtype=np.uint16), (4, 1))
    image = Image.fromarray(pixels)
    assert image.mode == "I;16"
    for name in ("x.png", "x.tif"):
        out = np.asarray(load_rgb(saved(tmp_path, image, name)))
        assert out.shape == (4, 4096, 3) and out.dtype == np.uint8
        grey = out[0, :, 0]
        assert grey[0] == 0 and grey[-1] == 255 and abs(int(grey[2048]) - 128) <= 1
        assert (grey == 255).mean() < 0.01  # clipping would make ~94% of pixels white
        assert np.all(np.diff(grey.astype(int)) >= 0)


def test_load_rgb_constant_16_bit_image(tmp_path: Path) -> None:
    image = Image.fromarray(np.full((3, 3), 1000, dtype=np.uint16))
    assert np.asarray(load_rgb(saved(tmp_path, image, "c.png"))).max() == 0


@pytest.mark.parametrize(
    ("mode", "name", "pixel", "expected"),
    [
        ("L", "l.png", 77, (77, 77, 77)),
        ("L", "l.jpg", 77, (77, 77, 77)),
        ("1", "one.png", 1, (255, 255, 255)),
        ("RGB", "rgb.png", (5, 6, 7), (5, 6, 7)),
        ("RGBA", "rgba.png", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", "clear.png", (10, 20, 30, 0), (255, 255, 255)),  # transparent -> white background
        ("LA", "la.png", (50, 0), (255, 255, 255)),
        ("CMYK", "cmyk.tif", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", "cmyk.jpg", (0, 255, 255, 0), (255, 0, 0)),
        ("F", "f.tif", 0.5, (0, 0, 0)),  # constant float image -> 0 after min-max scaling
    ],
)
def test_load_rgb_modes(tmp_path: Path, mode: str, name: str, pixel, expected) -> None:
    path = saved(tmp_path, Image.new(mode, (4, 4), pixel), name)
    with Image.open(path) as im:
        assert im.mode == mode
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (4, 4)
    got = out.getpixel((1, 1))
    assert all(abs(g - e) <= 3 for g, e in zip(got, expected, strict=True)), got  # JPEG is lossy


def test_load_rgb_palette(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert load_rgb(saved(tmp_path, palette, "p.png")).getpixel((0, 0)) == (200, 100, 50)
    palette.info["transparency"] = 1
    path = tmp_path / "pt.png"
    palette.save(path, transparency=1)
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_large_images_are_never_rejected(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (300, 300)).save(root / "img" / "big.png")
    # Shrink PIL's decompression-bomb limit so that 90,000 pixels counts as huge.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert check([good(image="img/big.png")], root)[1] == []
    assert load_rgb(root / "img" / "big.png").size == (300, 300)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is restored afterwards
