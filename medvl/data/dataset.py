"""Turn unified rows into model inputs exactly as training and evaluation read them.

:func:`encode` renders a conversation with the model's own chat template, expands each image
placeholder to the number of image tokens the processor computes for that image, and labels only
the assistant's answers and their end-of-turn token. The dataset, the collator and
``medvl.prepare``'s full validation path all go through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from medvl.data.chat import segments, to_messages
from medvl.data.format import image_paths
from medvl.data.images import load_rgb

IGNORE_INDEX = -100
#: Per-token image markers a processor returns, passed to the model under the same name: ``mm_token_type_ids``
#: (Qwen-VL: where its 3D rope positions change) or ``token_type_ids`` (Gemma 3: its image tokens attend to
#: each other both ways).
TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")


def load_image(root: str | Path, rel: str) -> Image.Image:
    """Open an image below ``root`` as RGB."""
    return load_rgb(Path(root) / rel)


def _checked_images(
    row: dict[str, Any],
    messages: list[dict[str, Any]],
    image_root: str | Path,
    images: Sequence[Image.Image] | None = None,
) -> list[Image.Image]:
    """The row's images (loaded unless given), one per ``<image>`` placeholder, or ValueError."""
    images = [load_image(image_root, p) for p in image_paths(row)] if images is None else list(images)
    n_expected = sum(1 for m in messages for c in m["content"] if c["type"] == "image")
    if n_expected != len(images):
        raise ValueError(f"row {row.get('id')}: {n_expected} <image> placeholders but {len(images)} images")
    return images


def encode(
    row: dict[str, Any],
    processor,
    image_root: str | Path,
    *,
    system_prompt: str | None = None,
    with_answer: bool = True,
    images: Sequence[Image.Image] | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize one row.

    With ``with_answer=False`` the result is the prompt of the first turn, ending in the
    assistant header, for generation and perplexity.

    Returns:
        ``input_ids`` and ``labels`` (1-D), plus ``pixel_values``, the processor's token types
        (:data:`TYPE_KEYS`) and, for Qwen-VL, ``image_grid_thw`` when the row has images.
    """
    tokenizer = processor.tokenizer
    messages = to_messages(row, system_prompt)
    images = _checked_images(row, messages, image_root, images)

    ids: list[int] = []
    labels: list[int] = []
    mm_types: list[int] = []
    pixel_values, grids = [], []
    type_key = TYPE_KEYS[0]
    cursor = 0
    for is_answer, text, n_img in segments(messages, processor, with_answer):
        chunk_mm = None
        if n_img:
            # The chat template already wrote the special tokens (Gemma's <bos>): the tokenizer adds none.
            out = processor(text=[text], images=images[cursor : cursor + n_img], return_tensors="pt",
                            add_special_tokens=False)
            cursor += n_img
            pixel_values.append(out["pixel_values"])
            if "image_grid_thw" in out:
                grids.append(out["image_grid_thw"])
            type_key = next((k for k in TYPE_KEYS if k in out), type_key)
            if type_key in out:
                chunk_mm = out[type_key][0].tolist()
        else:
            out = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        chunk = out["input_ids"][0].tolist()
        ids += chunk
        labels += chunk if is_answer else [IGNORE_INDEX] * len(chunk)
        mm_types += chunk_mm or [0] * len(chunk)
    return _item(ids, torch.tensor(labels), pixel_values, grids, type_key, mm_types)


def first_turn(row: dict[str, Any]) -> dict[str, Any]:
    """The row cut to its first question and answer: what generation answers and perplexity scores."""
    return {**row, "conversations": row["conversations"][:2]}


def append_answer(prompt: dict[str, torch.Tensor], row: dict[str, Any], processor, *,
                  system_prompt: str | None = None) -> dict[str, torch.Tensor]:
    """``encode(first_turn(row), ...)`` built from the row's encoded first-turn prompt (``encode(row, ...,
    with_answer=False)`` or :func:`encode_prompts`) by appending the answer's tokens and labels.

    The pieces after the prompt are text only, so the images are not loaded and processed a second time:
    evaluation encodes each row's prompt for generation and its answer for perplexity from one image pass.
    """
    pieces = list(segments(to_messages(first_turn(row), system_prompt), processor, with_answer=True))
    start = next(i for i, (is_answer, _, _) in enumerate(pieces) if is_answer)
    ids, labels = prompt["input_ids"].tolist(), prompt["labels"].tolist()
    type_key = next((key for key in TYPE_KEYS if key in prompt), TYPE_KEYS[0])
    mm_types = prompt[type_key].tolist() if type_key in prompt else [0] * len(ids)
    for is_answer, text, _ in pieces[start:]:
        chunk = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += chunk
        labels += chunk if is_answer else [IGNORE_INDEX] * len(chunk)
        mm_types += [0] * len(chunk)
    pixel_values = [prompt["pixel_values"]] if "pixel_values" in prompt else []
    grids = [prompt["image_grid_thw"]] if "image_grid_thw" in prompt else []
    return _item(ids, torch.tensor(labels), pixel_values, grids, type_key, mm_types)


#: A piece of a prompt as :func:`encode` cuts it: its text, and the images its placeholders stand for.
Piece = tuple[str, list[Image.Image]]


def encode_prompts(
    rows: Sequence[dict[str, Any]],
    processor,
    image_root: str | Path,
    *,
    system_prompt: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``encode(row, ..., with_answer=False)`` for each row, with one processor call for them all.

    Generation encodes a batch of prompts at a time; the processor's per-call overhead then dominated
    small models (about 1 ms a row). The pieces are the same as :func:`encode`'s and each text and
    image is processed on its own inside the batched call, so the results are identical (tested).
    """
    pieces = [_prompt_pieces(row, processor, image_root, system_prompt) for row in rows]
    encoded, type_key = _encode_pieces([piece for row_pieces in pieces for piece in row_pieces], processor)
    items, first = [], 0
    for row_pieces in pieces:
        items.append(_prompt_item(encoded[first : first + len(row_pieces)], type_key))
        first += len(row_pieces)
    return items


def _prompt_pieces(row: dict[str, Any], processor, image_root: str | Path, system_prompt: str | None) -> list[Piece]:
    """The pieces of a row's first-turn prompt, each with its own images."""
    messages = to_messages(row, system_prompt)
    images = _checked_images(row, messages, image_root)
    row_pieces, cursor = [], 0
    for _, text, n_img in segments(messages, processor, with_answer=False):
        row_pieces.append((text, images[cursor : cursor + n_img]))
        cursor += n_img
    return row_pieces


def _encode_pieces(flat: list[Piece], processor) -> tuple[list[dict[str, Any]], str]:
    """Each piece's ``input_ids`` and token ``types`` (with images: ``pixel_values`` and, for Qwen-VL,
    ``image_grid_thw``), from one tokenizer call for the text-only pieces and one processor call for the
    others; and the key the processor gives its token types under (:data:`TYPE_KEYS`)."""
    encoded: dict[int, dict[str, Any]] = {}
    text_only = [i for i, (_, images) in enumerate(flat) if not images]
    if text_only:
        out = processor.tokenizer([flat[i][0] for i in text_only], add_special_tokens=False)
        for i, ids in zip(text_only, out["input_ids"]):
            encoded[i] = {"input_ids": ids, "types": [0] * len(ids)}
    with_images = [i for i, (_, images) in enumerate(flat) if images]
    type_key = TYPE_KEYS[0]
    if with_images:
        image_pieces, type_key = _encode_image_pieces([flat[i] for i in with_images], processor)
        encoded.update(zip(with_images, image_pieces))
    return [encoded[i] for i in range(len(flat))], type_key


def _encode_image_pieces(pieces: list[Piece], processor) -> tuple[list[dict[str, Any]], str]:
    """:func:`_encode_pieces` for pieces with images: one padded processor call, cut back into the pieces."""
    out = processor(
        text=[text for text, _ in pieces],
        images=[images for _, images in pieces],  # one list per text: Gemma 3's processor needs them so
        padding=True,
        return_tensors="pt",
        add_special_tokens=False,
    )
    keep = out["attention_mask"].bool()
    # Qwen-VL's pixel_values are the images' patches, image_grid_thw rows of them each; Gemma 3's are one
    # resized image each.
    grids = out.get("image_grid_thw")
    patches = torch.split(out["pixel_values"], grids.prod(-1).tolist() if grids is not None else 1)
    type_key = next((key for key in TYPE_KEYS if key in out), TYPE_KEYS[0])
    encoded, first = [], 0
    for k, (_, images) in enumerate(pieces):
        n_img = len(images)
        mm = out[type_key][k][keep[k]].tolist() if type_key in out else None
        ids = out["input_ids"][k][keep[k]].tolist()
        piece = {"input_ids": ids, "types": mm or [0] * len(ids), "pixel_values": list(patches[first : first + n_img])}
        if grids is not None:
            piece["image_grid_thw"] = grids[first : first + n_img]
        encoded.append(piece)
        first += n_img
    return encoded, type_key


def _prompt_item(pieces: list[dict[str, Any]], type_key: str) -> dict[str, torch.Tensor]:
    """A row's encoded pieces joined into :func:`encode`'s item, every label ignored (a prompt has no answer)."""
    ids: list[int] = []
    mm_types: list[int] = []
    pixel_values, grids = [], []
    for piece in pieces:
        ids += piece["input_ids"]
        mm_types += piece["types"]
        pixel_values += piece.get("pixel_values", [])
        if "image_grid_thw" in piece:
            grids.append(piece["image_grid_thw"])
    return _item(ids, torch.full((len(ids),), IGNORE_INDEX), pixel_values, grids, type_key, mm_types)


def _item(ids: list[int], labels: torch.Tensor, pixel_values: list[torch.Tensor], grids: list[torch.Tensor],
          type_key: str, mm_types: list[int]) -> dict[str, torch.Tensor]:
    """The tensors of one encoded row; the image ones only when it has images."""
    item = {"input_ids": torch.tensor(ids), "labels": labels}
    if pixel_values:
        item["pixel_values"] = torch.cat(pixel_values)
        if grids:
            item["image_grid_thw"] = torch.cat(grids)
        item[type_key] = torch.tensor(mm_types)
    return item


class VQADataset(torch.utils.data.Dataset):
    """Rows in the unified format, encoded on the fly."""

    def __init__(self, rows: list[dict[str, Any]], processor, image_root: str | Path, *,
                 system_prompt: str | None = None, max_length: int | None = None,
                 lengths: list[int] | None = None):
        """``lengths``: each row's token length when already known (the start-up length check measures them)."""
        self.rows = rows
        self.processor = processor
        self.image_root = Path(image_root)
        self.system_prompt = system_prompt
        self.max_length = max_length
        if lengths is not None and len(lengths) != len(rows):
            raise ValueError(f"{len(lengths)} lengths for {len(rows)} rows")
        self._lengths: list[int] | None = list(lengths) if lengths is not None else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = encode(self.rows[i], self.processor, self.image_root, system_prompt=self.system_prompt)
        if self.max_length and len(item["input_ids"]) > self.max_length:
            # Truncating would cut image tokens or the answer; prepare rejects such rows up front.
            raise ValueError(f"row {self.rows[i].get('id')}: {len(item['input_ids'])} tokens > "
                             f"data.max_length={self.max_length}; run medvl.prepare to drop it")
        return item

    @property
    def lengths(self) -> list[int]:
        """Token length of every row, from the image headers (no pixel decoding), for length grouping."""
        if self._lengths is None:
            from medvl.data.token_length import estimate_lengths

            self._lengths = estimate_lengths(self.rows, self.processor, self.image_root,
                                             system_prompt=self.system_prompt)
        return self._lengths


class Collator:
    """Pad a list of encoded rows into a batch; ``padding_side`` right for training, left for generation."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def _pad(self, seqs: list[torch.Tensor], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype)
        for i, s in enumerate(seqs):
            if self.padding_side == "right":
                out[i, : len(s)] = s
            else:
                out[i, width - len(s) :] = s
        return out

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids = [it["input_ids"] for it in items]
        batch = {
            "input_ids": self._pad(ids, self.pad_token_id),
            "attention_mask": self._pad([torch.ones_like(s) for s in ids], 0),
            "labels": self._pad([it["labels"] for it in items], IGNORE_INDEX),
        }
        with_images = [it for it in items if "pixel_values" in it]
        if with_images:
            batch["pixel_values"] = torch.cat([it["pixel_values"] for it in with_images])
            if "image_grid_thw" in with_images[0]:
                batch["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in with_images])
            key = next(k for k in TYPE_KEYS if k in with_images[0])
            batch[key] = self._pad([it.get(key, torch.zeros_like(it["input_ids"])) for it in items], 0)
        return batch
