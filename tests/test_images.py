"""Image reading: load_rgb converts the pixel modes medical images come in to 8-bit RGB, and image_size
gives load_rgb's verdict (its size, or its error) without decoding where the file structure allows."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvl.data.images import UnsupportedMode, image_size, load_rgb


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




# --- image_size --------------------------------------------------------------------------------


def _encoded(fmt: str, mode: str, size: tuple[int, int], **save) -> bytes:
    rng = np.random.default_rng(sum(size))
    grey = Image.fromarray(rng.normal(128, 30, size[::-1]).clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    grey.convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def _damaged() -> dict[str, bytes]:
    """Files whose damage a header alone does not show (Pillow's verify() accepts the cut JPEGs and GIF)."""
    jpeg, png = _encoded("JPEG", "RGB", (700, 500)), _encoded("PNG", "RGB", (300, 260))
    gif = _encoded("GIF", "P", (200, 200))
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF
    return {"garbage.jpg": b"this is not an image\n" * 20, "empty.png": b"", "cut.jpg": jpeg[: len(jpeg) // 2],
            "no_eoi.jpg": jpeg[:-2], "trailing.jpg": jpeg + b"\0" * 100, "cut.png": png[: len(png) // 2],
            "flipped.png": bytes(flipped), "no_iend.png": png[:-12], "cut.gif": gif[: len(gif) // 3],
            "progressive.jpg": _encoded("JPEG", "RGB", (90, 70), progressive=True),
            "cmyk.jpg": _encoded("JPEG", "CMYK", (64, 48)), "grey16.png": _encoded("PNG", "I;16", (40, 30)),
            "thin.png": _encoded("PNG", "L", (2000, 8)), "ok.bmp": _encoded("BMP", "RGB", (33, 21))}


def _outcome(fn, path: Path):
    try:
        return tuple(fn(path))
    except UnsupportedMode:
        return "unsupported"
    except Exception:  # noqa: BLE001 - any other error rejects the image as unreadable
        return "unreadable"


@pytest.mark.parametrize("name", sorted(_damaged()))
def test_image_size_gives_the_verdict_of_a_full_decode(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(_damaged()[name])
    assert _outcome(image_size, path) == _outcome(lambda p: load_rgb(p).size, path)
