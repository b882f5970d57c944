"""A unified row as chat-template messages, and the rendered conversation in pieces.

:func:`segments` cuts the model's own chat-template rendering into prompt and answer pieces; encoding
(:mod:`medvl.data.dataset`) labels the answer pieces, and the header-only token count
(:mod:`medvl.data.token_length`) adds them up without running the image processor.
"""

from __future__ import annotations

import logging
from typing import Any

from medvl.config.errors import ConfigError
from medvl.data.format import HUMAN, IMAGE_TOKEN

log = logging.getLogger(__name__)

_PROBE = "MEDVL_ANSWER_PROBE"
#: chat template -> (end-of-turn token, gap after it, what the template itself renders there: the token, or "" where
#: medvl adds the end-of-sequence token to a template that ends an answer with nothing).
_end_of_turn: dict[str, tuple[str, str, str]] = {}


def end_of_turn(processor) -> tuple[str, str]:
    """(end-of-turn token, what follows it before the next turn) in the processor's chat template (:func:`_turn_end`)."""
    return _turn_end(processor)[:2]


def _turn_end(processor) -> tuple[str, str, str]:
    """(end-of-turn token, what follows it before the next turn, what the template itself renders as the token) in
    the processor's chat template:
    ``("<|im_end|>", "\\n")`` for Qwen-VL, ``("<end_of_turn>", "\\n")`` for Gemma 3. Read from the template's own
    rendering of an answer, so that a new family's markup needs no code here.

    A base checkpoint's template may end an answer with nothing (it concatenates the turns): the answer then ends
    with the tokenizer's end-of-sequence token, said once in the log, so that training teaches the model to stop
    and generation stops there. A template that renders no answer turn at all is one ConfigError."""
    template = str(getattr(processor, "chat_template", None) or "")
    if template not in _end_of_turn:
        messages = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": _PROBE}]}]
        try:
            rendered = processor.apply_chat_template(messages, tokenize=False)
        except ValueError as exc:  # no chat template at all
            raise ConfigError(f"the model's processor cannot render a conversation: {str(exc).splitlines()[0]}") from None
        if _PROBE not in rendered:
            raise ConfigError("the model's chat template renders no assistant turn, so answers cannot be labelled; use "
                              "a checkpoint whose processor has a chat template (an -Instruct model's)")
        after = rendered.split(_PROBE, 1)[1]
        token = after.rstrip("\n")
        if not token.strip():
            eos = getattr(getattr(processor, "tokenizer", processor), "eos_token", None)
            if not eos:
                raise ConfigError("the model's chat template ends an answer with no end-of-turn token and its tokenizer "
                                  "has no end-of-sequence token: the model could not learn where an answer stops")
            log.warning("The chat template ends an answer with no end-of-turn token (a base checkpoint's); answers end "
                        "with the tokenizer's end-of-sequence token %s", eos)
            _end_of_turn[template] = (eos, after, "")
        else:
            _end_of_turn[template] = (token, after[len(token):], token)
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
    rendered = ""  # what the template renders of the turns so far (the next prompt piece is its delta)
    end, gap, own_end = _turn_end(processor) if with_answer else ("", "", "")
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            if not with_answer:
                return
            answer = "".join(c["text"] for c in message["content"] if c["type"] == "text")
            yield True, answer + end, 0
            yield False, gap, 0
            rendered += answer + own_end + gap
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
