"""A deterministic synthetic medical VQA dataset (``data=synth``).

Grey-level images imitate three modalities with visibly different styles: CT (dark field, round
body, bright bony rim), MRI (mid-grey field, soft oval, no rim) and X-ray (black field, bright
rectangular thorax with ribs). Each image holds 0-3 lesions in image quadrants, each small or
large, round or square, bright or dark. Every question's answer is determined by the image, and
the questions cover all 12 categories of :mod:`medvl.data.taxonomy`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvl.data.format import make_row, write_jsonl
from medvl.data.taxonomy import CLOSED, OPEN

MODALITIES = ("CT", "MRI", "X-Ray")
BODY_PART = {"CT": "abdomen", "MRI": "brain", "X-Ray": "chest"}
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
NUMBERS = ("0", "1", "2", "3")
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
#: Questions per image; rows of one image stay in one split.
QUESTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class Lesion:
    quadrant: str
    large: bool
    round: bool
    bright: bool

    @property
    def side(self) -> str:
        return self.quadrant.split()[1]

    @property
    def kind(self) -> str:
        if self.round:
            return "calcification" if self.bright else "cyst"
        return "mass" if self.bright else "infarct"

    @property
    def look(self) -> str:
        return f"{'large' if self.large else 'small'} {'bright' if self.bright else 'dark'} {'round' if self.round else 'square'}"


@dataclass(frozen=True)
class Scene:
    modality: str
    lesions: tuple[Lesion, ...]

    @property
    def organ(self) -> str:
        return BODY_PART[self.modality]


def sample_scene(rng: np.random.Generator) -> Scene:
    modality = MODALITIES[rng.integers(3)]
    n = int(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15]))
    quadrants = rng.permutation(4)[:n]
    lesions = tuple(
        Lesion(QUADRANTS[q], bool(rng.integers(2)), bool(rng.integers(2)), bool(rng.integers(2)))
        for q in sorted(quadrants)
    )
    return Scene(modality, lesions)


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene as an 8-bit grey-level image of ``size`` x ``size`` pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if scene.modality == "CT":
        img = np.full((size, size), 10.0, np.float32)
        r = np.hypot(xx - 0.5, yy - 0.5)
        img[r < 0.46] = 70
        img[(r >= 0.40) & (r < 0.46)] = 230  # bony rim
    elif scene.modality == "MRI":
        img = np.full((size, size), 40.0, np.float32)
        img[((xx - 0.5) / 0.44) ** 2 + ((yy - 0.5) / 0.36) ** 2 < 1] = 150
    else:
        img = np.zeros((size, size), np.float32)
        img[(np.abs(xx - 0.5) < 0.42) & (np.abs(yy - 0.5) < 0.44)] = 170
        for k in range(4):  # ribs
            img[np.abs(yy - (0.2 + 0.2 * k)) < 0.02] = 240
    for lesion in scene.lesions:
        row, col = lesion.quadrant.split()
        cy = (0.27 if row == "upper" else 0.73) + rng.uniform(-0.05, 0.05)
        cx = (0.27 if col == "left" else 0.73) + rng.uniform(-0.05, 0.05)
        rad = (0.15 if lesion.large else 0.07) * rng.uniform(0.9, 1.1)
        if lesion.round:
            mask = np.hypot(xx - cx, yy - cy) < rad
        else:
            mask = (np.abs(xx - cx) < rad) & (np.abs(yy - cy) < rad)
        img[mask] = 255 if lesion.bright else 0
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")


def _count_word(n: int) -> str:
    return NUMBERS[n]


def questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """All (question, answer, answer_type, category) pairs this scene supports."""
    les = scene.lesions
    n = len(les)
    qs: list[tuple[str, str, str, str]] = [
        ("Is there a lesion in this image?", "yes" if n else "no", CLOSED, "closed_yes_no"),
        (f"Is there a lesion on the {(side := ('left', 'right')[rng.integers(2)])} side?",
         "yes" if any(x.side == side for x in les) else "no", CLOSED, "closed_yes_no"),
        ("Which modality is this, CT, MRI or X-Ray?", scene.modality, CLOSED, "closed_modality"),
        ("Which body part is shown?", scene.organ, OPEN, "open_anatomy"),
        ("How many lesions are there?", _count_word(n), OPEN, "open_counting"),
        ("Describe the image.",
         f"{scene.modality} of the {scene.organ} with {_count_word(n)} lesions", OPEN, "open_description"),
    ]
    if n == 1:
        (x,) = les
        qs += [
            ("Is the lesion on the left or the right?", x.side, CLOSED, "closed_location"),
            ("Is the lesion bright or dark?", "bright" if x.bright else "dark", CLOSED, "closed_general"),
            ("Where is the lesion?", x.quadrant, OPEN, "open_location"),
            ("What abnormality is seen?", x.kind, OPEN, "open_abnormality"),
            ("What does the lesion look like?", x.look, OPEN, "open_appearance"),
            ("What is the impact of the lesion on the organ?",
             "mass effect" if x.large else "no mass effect", OPEN, "open_impact"),
        ]
    if n >= 1:
        qs.append(("Is the largest lesion round or square?",
                   "round" if max(les, key=lambda x: x.large).round else "square", CLOSED, "closed_general"))
    if n >= 2:
        left = sum(x.side == "left" for x in les)
        right = n - left
        qs.append(("Which side has more lesions?",
                   "left" if left > right else "right" if right > left else "equal", OPEN, "open_comparison"))
    return qs


def generate_split(out_dir: str | Path, split: str, n_rows: int, *, image_size: int = 56, seed: int = 0) -> Path:
    """Write ``<out_dir>/<split>.jsonl`` and its images; return the JSONL path. Deterministic in ``seed``."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, SPLIT_SEEDS.get(split, 3)])
    rows: list[dict[str, Any]] = []
    img_idx = 0
    # Cycle through categories so every split covers all 12 even when small.
    while len(rows) < n_rows:
        scene = sample_scene(rng)
        name = f"images/{split}_{img_idx:05d}.png"
        render(scene, image_size, rng).save(out_dir / name)
        pool = questions(scene, rng)
        take = rng.permutation(len(pool))[:QUESTIONS_PER_IMAGE]
        for j in sorted(take):
            if len(rows) == n_rows:
                break
            q, a, at, cat = pool[j]
            rows.append(make_row(f"synth-{split}-{len(rows):06d}", name, q, a, answer_type=at, category=cat,
                                 source="synth", meta={"modality": scene.modality, "organ": scene.organ,
                                                       "n_lesions": len(scene.lesions)}))
        img_idx += 1
    path = out_dir / f"{split}.jsonl"
    write_jsonl(path, rows)
    return path


def source_digest(*paths: str | Path) -> str:
    """A short hash of source files, stamped on cached builds so that a code change rebuilds them."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def ensure_synth(out_dir: str | Path, sizes: dict[str, int], *, image_size: int = 56, seed: int = 0) -> Path:
    """Generate ``{split: rows}`` of synthetic data into ``out_dir`` unless the same spec is already there.

    ``python -m medvl.*`` passes conf/data/synth.yaml's sizes, image size and seed.
    """
    out_dir = Path(out_dir)
    sizes = dict(sizes)
    # The generator's own source is part of the spec: data cached by other code is regenerated.
    spec = {"sizes": sizes, "image_size": image_size, "seed": seed, "code": source_digest(__file__)}
    stamp = out_dir / "spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return out_dir
    for split, n in sizes.items():
        generate_split(out_dir, split, n, image_size=image_size, seed=seed)
    stamp.write_text(json.dumps(spec))
    return out_dir


def corpus_text() -> list[str]:
    """Every question and answer string the generator can produce, for training the tiny tokenizer."""
    rng = np.random.default_rng(0)
    texts = set()
    for _ in range(400):
        for q, a, _, _ in questions(sample_scene(rng), rng):
            texts.update((q, a))
    return sorted(texts)
