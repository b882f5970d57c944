"""Rows/s of medvl.prepare's fast validation (image headers) against the full path (dataset item + collator).

    python benchmarks/validate_throughput.py                       # 3000 rows, 750 images, model=tiny, 2 workers
    python benchmarks/validate_throughput.py --rows 6000 --images 1500 --workers 2
    python benchmarks/validate_throughput.py --min-pixels 200704 --max-pixels 1003520 --max-length 2048  # 7B's pixels
    python benchmarks/validate_throughput.py --headers --images 400   # image_size's parsers against Pillow's verify()

Generates, in a temporary folder, LLaVA-format rows over images of realistic sizes (long side 256-2000 px)
in the formats and pixel modes medical datasets come in (JPEG RGB/L/CMYK, PNG L/I;16/RGBA/P/RGB), with
smooth anatomy-like content plus noise so files compress like real scans, several questions per image
(VQA datasets share images) and 1% bad rows (truncated, undecodable, missing images). Then runs
``prepare()`` with ``full=false`` (``--repeat`` times) and ``full=true`` on the same rows, checks that every
row gets the same verdict and token length, and prints rows/s of both (end to end: conversion, checks,
writing) and their ratio (target: fast >= 20x full), plus CPU time per row, which other jobs on a shared
machine disturb far less than wall time.

``--headers`` times, on the same files in one run, how prepare's fast path judges an image
(:func:`medvl.data.images.image_size`: header plus the hand-written JPEG/PNG structure checks) against
Pillow's lazy ``Image.open().size`` plus ``verify()`` and a full decode (``load_rgb``, what training does),
and checks each verdict against the full decode's on the generated images and on the damaged files the
tests plant (cut, truncated by two bytes, trailing bytes, a flipped byte, no IEND, empty, not an image).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "samples"
#: (weight, file format, pixel mode): mostly 8-bit JPEG as in Slake, VQA-RAD, PathVQA and PMC figures.
KINDS = [(45, "JPEG", "RGB"), (15, "JPEG", "L"), (4, "JPEG", "CMYK"), (15, "PNG", "L"), (8, "PNG", "I;16"),
         (5, "PNG", "RGBA"), (5, "PNG", "P"), (3, "PNG", "RGB")]
#: (weight, long side range in px).
SIZES = [(20, (256, 512)), (40, (512, 1024)), (40, (1024, 2000))]


def make_image(args: tuple[Path, int]) -> str:
    path, seed = args
    rng = random.Random(seed)
    fmt, mode = rng.choices([(f, m) for _, f, m in KINDS], weights=[w for w, _, _ in KINDS])[0]
    lo, hi = rng.choices([r for _, r in SIZES], weights=[w for w, _ in SIZES])[0]
    long_side = rng.randint(lo, hi)
    short_side = int(long_side * rng.uniform(0.6, 1.0))
    size = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    nprng = np.random.default_rng(seed)
    base = Image.fromarray(nprng.integers(0, 255, (12, 12), dtype=np.uint8)).resize(size, Image.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32) + nprng.normal(0, 6, size[::-1])
    grey = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray((pixels.clip(0, 255) * 16).astype(np.uint16))  # 12-bit data, as CT/X-ray
    else:
        image = grey.convert(mode) if mode != "RGB" else Image.merge("RGB", (grey, grey.point(lambda v: v * 0.9), grey))
    path = path.with_suffix(".jpg" if fmt == "JPEG" else ".png")
    image.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path.name


def questions() -> list[tuple[str, str]]:
    pairs = [(r["question"], str(r["answer"])) for name in ("slake_train_en.json", "vqa_rad_test.json", "pathvqa_test.json")
             for r in json.loads((SAMPLES / name).read_text(encoding="utf-8"))]
    return pairs


def generate(root: Path, n_rows: int, n_images: int, seed: int) -> int:
    """Write images and ``train.jsonl`` below root; return the number of input rows."""
    (root / "images").mkdir(parents=True)
    with ProcessPoolExecutor(2) as pool:
        names = list(pool.map(make_image, [(root / "images" / f"img{i:05d}", seed * 100_003 + i) for i in range(n_images)],
                              chunksize=8))
    bad = root / "images" / "bad"
    bad.mkdir()
    good_jpeg = next(root / "images" / n for n in names if n.endswith(".jpg")).read_bytes()
    good_png = next(root / "images" / n for n in names if n.endswith(".png")).read_bytes()
    (bad / "cut.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (bad / "cut.png").write_bytes(good_png[: len(good_png) // 2])
    (bad / "junk.jpg").write_bytes(b"<html>not found</html>")
    bad_images = ["bad/cut.jpg", "bad/cut.png", "bad/junk.jpg", "bad/missing.jpg"]
    rng = random.Random(seed)
    pairs = questions()
    lines = []
    for i in range(n_rows):
        question, answer = pairs[i % len(pairs)]
        image = bad_images[i // 100 % len(bad_images)] if i % 100 == 99 else names[i * n_images // n_rows]
        lines.append(json.dumps({"id": f"r{i}", "image": f"images/{image}", "conversations": [
            {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}))
    rng.shuffle(lines)
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return n_rows


def damaged_images(folder: Path) -> list[Path]:
    """The damaged files tests/test_prepare.py plants, each a case an image check must judge as a decode does."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def encoded(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        grey = Image.fromarray(rng.normal(128, 30, size[::-1]).clip(0, 255).astype(np.uint8))
        grey.convert(mode).save(buf, format=fmt)
        return buf.getvalue()

    jpeg, png, gif = encoded("JPEG", "RGB", (700, 500)), encoded("PNG", "RGB", (300, 260)), encoded("GIF", "P", (200, 200))
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF
    files = {"garbage.jpg": b"this is not an image\n" * 20, "empty.png": b"", "cut.jpg": jpeg[: len(jpeg) // 2],
             "no_eoi.jpg": jpeg[:-2], "trailing.jpg": jpeg + b"\0" * 100, "cut.png": png[: len(png) // 2],
             "flipped.png": bytes(flipped), "no_iend.png": png[:-12], "cut.gif": gif[: len(gif) // 3],
             "thin.png": encoded("PNG", "L", (2000, 8))}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def pillow_verify(path: Path) -> tuple[int, int]:
    """The size from Pillow's lazy open, after ``verify()`` (and the same pixel-mode check as image_size)."""
    from medvl.data.images import mode_converts, no_pixel_limit

    with no_pixel_limit(), Image.open(path) as im:
        size, mode = im.size, im.mode
        im.verify()
    mode_converts(mode)
    return size


def verdict(fn, path: Path):
    try:
        return tuple(fn(path))
    except Exception as exc:  # noqa: BLE001 - any error is a rejection; the kind does not matter here
        return "reject" if not isinstance(exc, AssertionError) else repr(exc)


def compare_headers(images: list[Path], damaged: list[Path], repeat: int) -> int:
    """Time each way of judging an image on the same files; count verdicts that differ from a full decode's."""
    from medvl.data.images import image_size, load_rgb

    ways = {"image_size (hand-written JPEG/PNG checks)": image_size,
            "Pillow Image.open().size + verify()": pillow_verify,
            "full decode (load_rgb)": lambda p: load_rgb(p).size}
    files = images + damaged
    truth = {p: verdict(ways["full decode (load_rgb)"], p) for p in files}  # also warms the page cache
    print(f"{len(images)} generated images ({sum(p.suffix == '.jpg' for p in images)} JPEG, "
          f"{sum(p.suffix == '.png' for p in images)} PNG) + {len(damaged)} damaged files; single process, "
          f"median of {repeat} passes")
    failed = 0
    for name, fn in ways.items():
        seconds, got = [], {}
        for _ in range(repeat):
            t0 = time.perf_counter()
            got = {p: verdict(fn, p) for p in files}
            seconds.append(time.perf_counter() - t0)
        wrong = [p for p in files if got[p] != truth[p]]
        wrong_damaged = [f"{p.name} ({got[p] if got[p] == 'reject' else 'accepted'})" for p in damaged if p in wrong]
        per_format = {ext: [p for p in images if p.suffix == ext] for ext in (".jpg", ".png")}
        per_file = {ext: 1e6 * min(timeit(fn, paths) for _ in range(repeat)) / max(1, len(paths))
                    for ext, paths in per_format.items()}
        print(f"{name:42s} {1e6 * statistics.median(seconds) / len(files):8.1f} us/file ({per_file['.jpg']:8.1f} "
              f"us/JPEG, {per_file['.png']:8.1f} us/PNG); verdicts unlike a full decode: "
              f"{len(wrong) - len(wrong_damaged)} generated, {len(wrong_damaged)} of {len(damaged)} damaged"
              + (f": {', '.join(wrong_damaged)}" if wrong_damaged else ""))
        failed += bool(wrong) and fn is image_size
    return 1 if failed else 0


def timeit(fn, paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        verdict(fn, p)
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the pool's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def outcomes(out: Path) -> tuple[list, list]:
    kept = [(r["id"], r["meta"]["n_tokens"]) for r in map(json.loads, (out / "train.jsonl").read_text().splitlines())]
    rejects = [(r.get("id"), r["source"], r["reason"], r.get("n_tokens")) for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())]
    return kept, rejects


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--images", type=int, default=750)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-pixels", type=int, default=None, help="model.min_pixels (default: the tiny model's)")
    parser.add_argument("--max-pixels", type=int, default=None, help="model.max_pixels (default: the tiny model's)")
    parser.add_argument("--max-length", type=int, default=1024, help="data.max_length")
    parser.add_argument("--repeat", type=int, default=3, help="fast runs (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    parser.add_argument("--headers", action="store_true",
                        help="only time image_size's JPEG/PNG checks against Pillow's verify() and a full decode")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.headers:
        return headers_main(args)

    from hydra import compose, initialize_config_dir

    from medvl.config import CONF_DIR
    from medvl.data.prepare import prepare
    from medvl.models.loading import load_processor

    tmp = Path(tempfile.mkdtemp(prefix="medvl-validate-bench-"))
    try:
        t0 = time.perf_counter()
        n_rows = generate(tmp / "data", args.rows, args.images, args.seed)
        sizes = [Image.open(p).size for p in sorted((tmp / "data" / "images").glob("img*"))]
        megapixels = [w * h / 1e6 for w, h in sizes]
        print(f"generated {n_rows} rows over {len(sizes)} images in {time.perf_counter() - t0:.0f}s: long side "
              f"{min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px, mean {np.mean(megapixels):.2f} MP")
        overrides = ["data=llava", f"data.root={tmp / 'data'}", "model=tiny", f"workers={args.workers}",
                     f"data.max_length={args.max_length}", "output_dir=unused"]
        overrides += [f"model.min_pixels={args.min_pixels}"] * (args.min_pixels is not None)
        overrides += [f"model.max_pixels={args.max_pixels}"] * (args.max_pixels is not None)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            load_processor(compose(config_name="prepare", overrides=overrides).model)  # imports out of the timing
        wall: dict[str, list[float]] = {"fast": [], "full": []}
        cpu: dict[str, list[float]] = {"fast": [], "full": []}
        reports = {}
        for mode in ["fast"] * args.repeat + ["full"]:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="prepare",
                              overrides=[*overrides, f"data.dir={tmp / mode}", f"full={mode == 'full'}"])
            t0, c0 = time.perf_counter(), cpu_seconds()
            reports[mode] = prepare(cfg)
            wall[mode].append(time.perf_counter() - t0)
            cpu[mode].append(cpu_seconds() - c0)
        same = outcomes(tmp / "fast") == outcomes(tmp / "full")
        rate = {m: n_rows / statistics.median(w) for m, w in wall.items()}
        cpu_ms = {m: 1000 * statistics.median(c) / n_rows for m, c in cpu.items()}
        pixels = f"{reports['fast']['model']['min_pixels']}..{reports['fast']['model']['max_pixels']}"
        print(f"\nmodel=tiny (pixels {pixels}), workers={args.workers}, {n_rows} rows, kept "
              f"{reports['fast']['total']['kept']}, rejected {reports['fast']['total']['rejected']}; "
              f"wall time: median of {args.repeat} fast runs, one full run; CPU: this process and its workers")
        for m in ("fast", "full"):
            print(f"{m}: {statistics.median(wall[m]):7.2f} s  {rate[m]:8.1f} rows/s   {cpu_ms[m]:7.2f} CPU ms/row"
                  + (f"   (runs: {', '.join(f'{w:.2f}' for w in wall[m])} s)" if len(wall[m]) > 1 else ""))
        print(f"fast / full: {rate['fast'] / rate['full']:.1f}x rows/s, {cpu_ms['full'] / cpu_ms['fast']:.1f}x CPU per row "
              f"(target >= 20x)")
        print(f"verdicts and token lengths identical on every row: {'yes' if same else 'NO'}")
        return 0 if same else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def headers_main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="medvl-headers-bench-"))
    try:
        n_rows = generate(tmp / "data", args.images, args.images, args.seed)
        images = sorted((tmp / "data" / "images").glob("img*"))
        assert len(images) == n_rows
        return compare_headers(images, damaged_images(tmp / "damaged"), args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
