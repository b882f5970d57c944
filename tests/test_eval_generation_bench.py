"""benchmarks/eval_generation.py's GPU mode works end to end: ``--smoke`` runs it on the CPU at tiny sizes through
medvl's own ``generate_tokens``, and its identity check catches a padding bug."""

from __future__ import annotations

import json

import pytest

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("eval_generation") as module:
        yield module


def test_smoke_decodes_both_ways_with_identical_tokens(bench, tmp_path, capsys):
    out = tmp_path / "results.json"
    results = bench.main(["--smoke", "--json", str(out)])
    printed = capsys.readouterr().out
    assert [r["model"] for r in results] == ["2b", "7b"]
    for r in results:
        assert r["rows_per_s_batched"] > 0 and r["rows_per_s_single"] > 0
        assert r["speedup"] == pytest.approx(r["rows_per_s_batched"] / r["rows_per_s_single"])
        # float32 on the CPU: left padding must not change a single token (random weights rarely stop early).
        assert r["identical_rows"] == r["rows"] == 6 and r["first_differences"] == []
        assert r["new_tokens_mean"] == r["max_new_tokens"] == 4
    assert "identical = the same new token ids" in printed and "speed-up:" in printed
    assert json.loads(out.read_text())["models"] == results
    # The slow one-at-a-time path on the first rows only: its rate and the comparison cover those.
    (part,) = bench.main(["--smoke", "--models", "7b", "--single-rows", "3"])
    assert (part["rows"], part["rows_single"], part["identical_rows"]) == (6, 3, 3)


def test_the_identity_check_catches_a_padding_bug(bench, monkeypatch):
    """Right padding in generation (prompts no longer end where decoding starts) must show as differing rows."""
    import medvl.evaluation.generate as generate

    real = generate.Collator
    monkeypatch.setattr(generate, "Collator", lambda pad, padding_side="right": real(pad, padding_side="right"))
    (result,) = bench.main(["--smoke", "--models", "2b"])
    assert result["identical_rows"] < result["rows"]
    assert result["first_differences"] and all(d["top2_logit_gap"] >= 0 for d in result["first_differences"])
