"""What evaluation asks of the tiny model: generation that stops at the end of the turn, and the perplexity of the
reference answer alone."""

from __future__ import annotations

import pytest

from medvl.data.format import read_jsonl
from medvl.evaluation.perplexity import answer_nll


def test_generation_stops_at_end_of_turn_when_the_tokenizer_eos_is_another_token(compose, small_synth):
    """A base checkpoint's eos is ``<|endoftext|>``; fine-tuned answers end with ``<|im_end|>``."""
    from medvl.evaluation.generate import generate_batch
    from medvl.evaluation.run import load_for_eval

    cfg = compose([], config_name="eval")
    model, processor = load_for_eval(cfg, None, device="cpu")
    tokenizer = processor.tokenizer
    tokenizer.eos_token = "<|endoftext|>"
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    model.generate = spy
    generate_batch(model, processor, read_jsonl(small_synth / "test.jsonl")[:2], small_synth, max_new_tokens=2)
    assert end_of_turn in seen["eos_token_id"] and tokenizer.eos_token_id in seen["eos_token_id"]


def test_perplexity_of_a_multi_turn_row_is_of_its_reference_answer_only(compose, small_synth):
    from medvl.evaluation.run import load_for_eval

    cfg = compose([], config_name="eval")
    model, processor = load_for_eval(cfg, None, device="cpu")
    model.eval()
    row = read_jsonl(small_synth / "test.jsonl")[0]
    longer = {**row, "conversations": [*row["conversations"], {"from": "human", "value": "Are you sure?"},
                                       {"from": "gpt", "value": "Yes, I am quite sure about it."}]}
    (nll, n), (nll_2, n_2) = answer_nll(model, processor, [row, longer], small_synth)
    assert n_2 == n
    assert nll_2 == pytest.approx(nll, abs=1e-5)
