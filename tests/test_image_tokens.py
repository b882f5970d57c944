"""The image-token arithmetic (token_length.image_token_count, from transformers' smart_resize) gives the
Qwen2-VL image processor's own grid on every size and pixel budget, including the thin and tiny images where
qwen_vl_utils.smart_resize does not (it rounds a side under 14 px up to 28 before checking the budget, and can
return a side of 0): that is why medvl does not use qwen-vl-utils."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from PIL import Image

from medvl.data.token_length import image_token_count

# (min_pixels, max_pixels): the tiny preset's budget, the real presets' (2b/7b/32b) and transformers' default.
BUDGETS = {"tiny": (3136, 12544), "real": (200704, 1003520), "default": (56 * 56, 28 * 28 * 1280)}
_rng = random.Random(0)
SIZES = [(1, 1), (10, 10), (13, 13), (14, 14), (27, 27), (28, 28), (29, 29), (41, 43), (56, 56), (10, 2000),
         (2000, 10), (8, 1500), (3, 500), (100, 3), (29, 5000), (55, 1932), (2830, 51), (512, 512), (640, 480),
         (1000, 1000), (2048, 1536), (3000, 2000)]
SIZES += [(_rng.randint(1, 2500), _rng.randint(1, 2500)) for _ in range(12)]
SIZES += [(_rng.randint(1, 60), _rng.randint(100, 2500)) for _ in range(6)]
SIZES = [(w, h) for w, h in SIZES if max(w, h) / min(w, h) <= 200]  # the processor refuses the others


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_image_tokens_equal_the_processors_grid(tiny_dir, budget: str) -> None:
    from medvl.models.loading import load_processor

    low, high = BUDGETS[budget]
    model = SimpleNamespace(min_pixels=low, max_pixels=high, trust_remote_code=False)
    image_processor = load_processor(model, str(tiny_dir)).image_processor
    merge = image_processor.merge_size
    expected, got = [], []
    for width, height in SIZES:
        grid = image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0]
        expected.append(int(grid.prod()) // (merge * merge))
        got.append(image_token_count(width, height, image_processor))
    assert got == expected
