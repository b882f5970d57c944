"""The byte-level BPE the tiny offline models' tokenizers are trained as (each family wraps it its own way)."""

from __future__ import annotations


def train_byte_bpe(texts: list[str], vocab_size: int, special_tokens: list[str]):
    """A ``tokenizers.Tokenizer``: byte-level BPE of ``vocab_size`` trained on ``texts``, ``special_tokens`` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
