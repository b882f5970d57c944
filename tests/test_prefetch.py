"""Evaluation's batches are encoded ahead of the model in a background thread (on a GPU), in order, errors where
they belong."""

from __future__ import annotations

import threading

import pytest

import medvl.evaluation.generate as generate_mod
from medvl.data.format import read_jsonl
from medvl.evaluation.generate import answer_chunks, iter_batches, prefetched
from medvl.models.loading import load_model, load_processor


def test_the_next_chunk_is_encoded_while_the_caller_works_on_this_one():
    started = {i: threading.Event() for i in range(3)}

    def encode(chunk):
        started[chunk].set()
        return chunk * 10, threading.current_thread().name

    seen = []
    for chunk, (value, thread) in prefetched([0, 1, 2], encode):
        if chunk < 2:  # the caller is still on this chunk: the next one's encoding has begun meanwhile
            assert started[chunk + 1].wait(timeout=10), f"chunk {chunk + 1} was not encoded ahead"
        seen.append((chunk, value))
        assert thread.startswith("medvl-encode")
    assert seen == [(0, 0), (1, 10), (2, 20)]


def test_without_background_each_chunk_is_encoded_in_turn_in_the_callers_thread():
    calls = []
    out = list(prefetched([1, 2], lambda c: calls.append(threading.current_thread()) or c, background=False))
    assert out == [(1, 1), (2, 2)] and calls == [threading.main_thread()] * 2


def test_an_encoding_error_is_raised_at_its_chunk_after_the_chunks_before_it():
    def encode(chunk):
        if chunk == 2:
            raise ValueError("row 7: 2 <image> placeholders but 1 images")
        return chunk

    got = []
    with pytest.raises(ValueError, match="row 7: 2 <image> placeholders"):
        for chunk, _ in prefetched([0, 1, 2, 3], encode):
            got.append(chunk)
    assert got == [0, 1]
    assert list(prefetched([], encode)) == []


def test_on_the_cpu_evaluation_encodes_in_turn_once_per_chunk(compose, small_synth, monkeypatch):
    """The model and a background encoder would share the CPU's cores: on the CPU each chunk is encoded in the
    calling thread, once (generation's prompts and perplexity's items from one image pass)."""
    cfg = compose([])
    processor, model = load_processor(cfg.model), load_model(cfg.model)
    rows = read_jsonl(small_synth / "test.jsonl")[:6]
    threads, real = [], generate_mod.encode_chunk
    monkeypatch.setattr(generate_mod, "encode_chunk", lambda *a, **k: threads.append(
        threading.current_thread()) or real(*a, **k))
    out = list(answer_chunks(model, processor, list(iter_batches(rows, 4)), small_synth, max_new_tokens=4,
                             perplexity=True))
    assert [len(chunk) for chunk, _, _ in out] == [4, 2] and threads == [threading.main_thread()] * 2
    assert all(len(preds) == len(chunk) and all(n > 0 for _, n in nlls) for chunk, preds, nlls in out)
