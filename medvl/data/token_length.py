"""Token lengths without decoding pixels: the fast path of validation and length grouping.

The number of image tokens follows from the image's header size and the processor's resize rule
(``smart_resize`` with the configured min/max pixels), so a row's length is known without running
the image processor. It must equal ``len(encode(row)["input_ids"])`` exactly; tests check that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvl.config.families import model_family
from medvl.data.chat import segments, to_messages
from medvl.data.format import image_paths
from medvl.data.images import header_size


def max_image_tokens(model_cfg: Any) -> int:
    """Tokens of the largest image ``model.max_pixels`` allows: the processor resizes every image to a
    multiple of the token's side (28 or 32 px) with at most ``max_pixels`` pixels, so no image gets more
    (pixels per token: the family's ``FamilySpec.pixels_per_token``)."""
    return int(model_cfg.max_pixels) // model_family(model_cfg).pixels_per_token


def resolve_max_length(model_cfg: Any, data_cfg: Any) -> int:
    """``data.max_length`` as prepare and training apply it: the configured number, or (``null``) the
    largest image the model's pixel budget allows plus ``data.text_tokens`` for the text."""
    if data_cfg.max_length is not None:
        return int(data_cfg.max_length)
    return max_image_tokens(model_cfg) + int(data_cfg.text_tokens)


def describe_max_length(model_cfg: Any, data_cfg: Any) -> str:
    """How the limit came about, for logs and prepare's report."""
    if data_cfg.max_length is not None:
        return "set by data.max_length"
    return (f"derived: {max_image_tokens(model_cfg)} image tokens (model.max_pixels={int(model_cfg.max_pixels)}) "
            f"+ data.text_tokens={int(data_cfg.text_tokens)}")


def image_token_count(width: int, height: int, image_processor) -> int:
    """Image tokens the processor produces for an image of this size (after its resize)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    patch = image_processor.patch_size
    merge = image_processor.merge_size
    size = image_processor.size
    h, w = smart_resize(height, width, factor=patch * merge, min_pixels=size["shortest_edge"],
                        max_pixels=size["longest_edge"])
    return (h // patch) * (w // patch) // (merge * merge)


def token_length(row: dict[str, Any], processor, image_root: str | Path, *,
                 system_prompt: str | None = None, sizes: list[tuple[int, int]] | None = None) -> int:
    """The length ``encode(row, ...)`` would give, computed from text and image headers only."""
    tokenizer = processor.tokenizer
    # Gemma 3 resizes every image to one square: each placeholder becomes the same text, expanded here as its
    # processor expands it (the newlines around it may merge with the neighbouring text's).
    fixed = getattr(processor, "full_image_sequence", None)
    if sizes is None and fixed is None:
        sizes = [header_size(Path(image_root) / p) for p in image_paths(row)]
    counts = [] if fixed is not None else [image_token_count(w, h, processor.image_processor) for w, h in sizes]
    total, cursor = 0, 0
    for _, text, n_img in segments(to_messages(row, system_prompt), processor):
        if fixed is not None:
            text = text.replace(processor.image_token, fixed)
        total += len(tokenizer(text, add_special_tokens=False).input_ids)
        # Each image is one <|image_pad|> in the template text, expanded to its token count.
        total += sum(c - 1 for c in counts[cursor : cursor + n_img])
        cursor += n_img
    return total


def estimate_lengths(rows: list[dict[str, Any]], processor, image_root: str | Path, *,
                     system_prompt: str | None = None) -> list[int]:
    """:func:`token_length` of every row; images of the same path are read once."""
    cache: dict[str, tuple[int, int]] = {}
    out = []
    for row in rows:
        sizes = []
        for p in image_paths(row):
            if p not in cache:
                cache[p] = header_size(Path(image_root) / p)
            sizes.append(cache[p])
        out.append(token_length(row, processor, image_root, system_prompt=system_prompt, sizes=sizes))
    return out
