"""benchmarks/gpu_train.py works end to end: ``--smoke`` runs every configuration on the CPU at tiny sizes through
medvl's own training setup (the GPU-only ones are skipped with medvl's one-line refusal), and the FLOP count that
MFU divides by is the documented formula."""

from __future__ import annotations

import json

import pytest

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("gpu_train") as module:
        yield module


def test_smoke_runs_every_configuration_or_says_why_not(bench, tmp_path, capsys, cache_dir):
    out = tmp_path / "results.json"
    results = bench.main(["--smoke", "--json", str(out)])
    printed = capsys.readouterr().out
    assert set(results) == {run.name for run in bench.RUNS}
    measured = {name: r for name, r in results.items() if "tokens_per_s" in r}
    # On the CPU: every LoRA configuration (padded and packed, three families) runs; Liger and QLoRA are refused.
    assert set(measured) == {r.name for r in bench.RUNS if "liger" not in r.name and "qlora" not in r.name}
    for r in measured.values():
        assert r["tokens_per_s"] > 0 and r["flops_per_s"] > 0 and r["rows_per_step"] == 2 and r["attn"] == "sdpa"
        assert r["peak_allocated_gib"] is None  # no CUDA memory to report on the CPU
    assert results["7b lora packed liger"]["skipped"].startswith("trainer.liger=true needs a CUDA GPU")
    assert results["7b qlora+ckpt packed b4"]["skipped"].startswith("lora.qlora=true needs a CUDA GPU")
    assert "MFU = needed FLOPs / time / matmul peak" in printed and "4*N_llm*L + 4*N_head*T" in printed
    assert "targets (smoke: tiny CPU models, the ratios mean nothing)" in printed
    assert "7B LoRA packed MFU >= 45%" in printed and "packed >= 1.5x padded tokens/s" in printed
    assert json.loads(out.read_text())["runs"] == list(results.values())


def test_the_flop_count_is_the_documented_formula(bench):
    counts = bench.Counts(llm=10, head=7, vision=5, merger=2, layers=1, d_attn=4, depth=1, d_vision=2,
                          window_blocks=0, window_patches=0)
    # 3 tokens (2 of them answer tokens), 1 image token = 4 patches, 1 trainable LoRA parameter:
    # 4*10*3 + 4*7*2 + 6*1*3 + 6*1*4*3^2 + 2*5*4 + 2*2*1 + 4*1*2*4*4
    assert counts.row_flops(3, 1, 1, 2) == 120 + 56 + 18 + 216 + 40 + 4 + 128
    # Qwen2.5-VL's windowed blocks attend within a window of 64 patches, not the whole image.
    windowed = bench.Counts(llm=0, head=0, vision=0, merger=0, layers=0, d_attn=0, depth=4, d_vision=1,
                            window_blocks=3, window_patches=64)
    assert windowed.row_flops(0, 100, 0, 0) == 4 * 1 * 400 * (1 * 400 + 3 * 64)


def test_the_published_configs_give_the_published_sizes(bench):
    # Parameter counts of the hub checkpoints (Qwen2.5-VL-7B: 8.29B, Qwen3-VL-8B: 8.77B), built on the meta device.
    import torch

    sizes = {key: sum(p.numel() for p in bench.build_random(spec, torch.bfloat16, "meta").parameters())
             for key, spec in bench.SPECS.items()}
    assert sizes["7b"] == pytest.approx(8.29e9, rel=2e-3) and sizes["8b"] == pytest.approx(8.77e9, rel=2e-3)
    assert sizes["2b"] == pytest.approx(2.21e9, rel=5e-3)


def test_batches_collated_in_worker_processes_are_counted(bench, tmp_path, cache_dir):
    """medvl.train's default on a GPU machine is dataloader workers, and the benchmark keeps it: each batch's
    tokens and FLOPs travel with the batch from the worker that collated it to the training step."""
    run = next(r for r in bench.RUNS if r.name == "7b lora packed")
    assert bench.compose_config(run, bench.SMOKE_SPECS["7b"], tmp_path, steps=2, batch=2).trainer.dataloader_num_workers is None
    results = bench.main(["--smoke", "--only", "2b lora packed", "--workers", "2", "--json", str(tmp_path / "r.json")])
    measured = results["2b lora packed"]
    assert measured["tokens_per_s"] > 0 and measured["flops_per_s"] > 0


def test_a_configuration_that_measured_nothing_is_no_target(bench):
    empty = {"name": "7b lora packed", "tokens_per_s": 0.0, "flops_per_s": 0.0, "peak_reserved_gib": None}
    assert bench.targets({"7b lora packed": empty, "7b lora padded length-grouped": {**empty, "name": "x"}},
                         1e12) == ["no target could be measured (their configurations were skipped)"]
