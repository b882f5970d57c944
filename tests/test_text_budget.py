"""Each data config's ``text_tokens`` (the text share of the derived ``max_length``) holds the real rows.

Qwen's tokenizers are byte-level BPE: an ordinary token covers at least one UTF-8 byte and a special token
(``<|im_start|>``, ...) is one token, so the bytes of the chat-template-rendered conversation, with each special
token counted as one and image placeholders left out (they are the image's share), bound its token count from
above without the real tokenizer, which cannot be downloaded here. The rows are the real ones under
tests/fixtures/samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.config import CONF_DIR
from medvl.data.chat import to_messages

SAMPLES = Path(__file__).parent / "fixtures" / "samples"


def _vqa(file: str, key: str = "question") -> list[tuple[str, str]]:
    rows = json.loads((SAMPLES / file).read_text(encoding="utf-8"))
    return [(r[key], str(r["answer"])) for r in rows]


def _gmai() -> list[tuple[str, str]]:
    rows = json.loads((SAMPLES / "gmai_mmbench_val.json").read_text(encoding="utf-8"))
    options = lambda r: "\n".join(f"{k}. {r[k]}" for k in "ABCDE" if r.get(k) not in (None, ""))  # noqa: E731
    return [(f"{r['question']}\n{options(r)}\nAnswer with the option's letter from the given choices directly.",
             r["answer"]) for r in rows]


CASES = {
    "slake": lambda: _vqa("slake_train_en.json") + _vqa("slake_validate_en.json") + _vqa("slake_test_zh.json"),
    "vqa_rad": lambda: _vqa("vqa_rad_test.json"),
    "pathvqa": lambda: _vqa("pathvqa_test.json"),
    "gmai_mmbench": _gmai,
}


SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")


def token_bound(processor, question: str, answer: str) -> int:
    """An upper bound on the text tokens of one rendered row (default system prompt, one image)."""
    row = {"conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]}
    text = processor.apply_chat_template(to_messages(row, None), tokenize=False).replace("<|image_pad|>", "")
    n_special = sum(text.count(t) for t in SPECIAL)
    for token in SPECIAL:
        text = text.replace(token, "")
    return len(text.encode("utf-8")) + n_special


@pytest.mark.parametrize("data", sorted(CASES))
def test_text_tokens_hold_every_real_row(data, tiny_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    budget = OmegaConf.load(CONF_DIR / "data" / f"{data}.yaml").text_tokens
    sizes = [token_bound(processor, q, a) for q, a in CASES[data]()]
    assert sizes and max(sizes) <= budget, f"data={data}: a real row renders to up to {max(sizes)} tokens > text_tokens={budget}"
