"""A unified row as chat-template messages, and the rendered conversation in pieces.

:func:`segments` cuts the model's own chat-template rendering into prompt and answer pieces; encoding
(:mod:`medvl.data.dataset`) labels the answer pieces, and the header-only token count
(:mod:`medvl.data.token_length`) adds them up without running the image processor.
"""

from __future__ import annotations

from typing import Any

from medvl.data.format import HUMAN, IMAGE_TOKEN

_PROBE = "MEDVL_ANSWER_PROBE"
_end_of_turn: dict[str, tuple[str, str]] = {}


def end_of_turn(processor) -> tuple[str, str]:
    """(end-of-turn token, what follows it before the next turn) in the processor's chat template:
    ``("<|im_end|>", "\\n")`` for Qwen-VL, ``("<end_of_turn>", "\\n")`` for Gemma 3. Read from the template's own
    rendering of an answer, so that a new family's markup needs no code here."""
    template = str(getattr(processor, "chat_template", None) or "")
    if template not in _end_of_turn:
        messages = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": _PROBE}]}]
        after = processor.apply_chat_template(messages, tokenize=False).split(_PROBE, 1)[1]
        token = after.rstrip("\n")
        _end_of_turn[template] = (token, after[len(token):])
    return _end_of_turn[template]


def to_messages(row: dict[str, Any], system_prompt: str | None) -> list[dict[str, Any]]:
    """Convert LLaVA-style turns to chat-template messages; ``<image>`` marks where images go."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    for turn in row["conversations"]:
        role = "user" if turn["from"] == HUMAN else "assistant"
        content: list[dict[str, Any]] = []
        pieces = [turn["value"]] if role == "assistant" else turn["value"].split(IMAGE_TOKEN)
        for i, piece in enumerate(pieces):
            if i > 0:
                content.append({"type": "image"})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        messages.append({"role": role, "content": content})
    return messages


def segments(messages: list[dict[str, Any]], processor, with_answer: bool = True):
    """Yield ``(is_answer, text, n_images)`` pieces that concatenate to the rendered conversation.

    Prompt pieces are deltas of the model's own chat template; answer pieces are the answer
    text plus end-of-turn, so labels can cover exactly those tokens.
    """
    rendered = ""
    end, gap = end_of_turn(processor) if with_answer else ("", "")
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            if not with_answer:
                return
            answer = "".join(c["text"] for c in message["content"] if c["type"] == "text")
            yield True, answer + end, 0
            yield False, gap, 0
            rendered += answer + end + gap
            continue
        next_is_answer = k + 1 < len(messages) and messages[k + 1]["role"] == "assistant"
        ends_prompt = message["role"] == "user" and (next_is_answer or k + 1 == len(messages))
        text = processor.apply_chat_template(messages[: k + 1], tokenize=False,
                                             add_generation_prompt=ends_prompt)
        n_img = sum(1 for c in message["content"] if c["type"] == "image")
        yield False, text[len(rendered):], n_img
        rendered = text
        if not with_answer and ends_prompt:
            return
