"""Batched (left-padded) vs one-at-a-time greedy generation: the tiny model on the CPU, or (``--gpu``) 2B- and
7B-sized models on a GPU.

    .venv/bin/python benchmarks/eval_generation.py                    # 150-step adapter, 300 rows
    .venv/bin/python benchmarks/eval_generation.py --train-steps 0    # the untrained tiny model
    python benchmarks/eval_generation.py --gpu --json results.json     # Qwen2-VL-2B, Qwen2.5-VL-7B sizes, bf16
    python benchmarks/eval_generation.py --smoke                       # the --gpu path on the CPU at tiny sizes

``--gpu``: random-weight models of the published Qwen2-VL-2B and Qwen2.5-VL-7B configs (benchmarks/bench_models.py,
no download) in bf16, on Slake-like prompts (one image of 256-1280 image tokens and a short question), decoded
with medvl's ``generate_tokens`` (greedy, the KV cache, left padding) ``--batch-size`` rows per call and one row
per call (the seeds' way); prints rows/s of both, the speed-up and how many rows decode to identical token ids.
Random weights emit arbitrary tokens and rarely the stop token, so every row decodes all max_new_tokens steps,
and their top two logits are often close: where bf16 batched and single outputs part, the first differing step's
top-2 logit gap (re-scored alone, unpadded) tells a near tie (round-off) from a wide gap (a padding bug).

The CPU mode (without ``--gpu``/``--smoke``):

A tiny LoRA adapter is trained briefly on the synthetic data first (an untrained model emits
garbage up to max_new_tokens for every row, which is not what evaluation sees); then the same
synth test rows are decoded greedily with medvl.evaluation.generate twice: ``batch_size`` rows per
``generate`` call, left-padded, and one row per call. The two modes alternate chunk by chunk so
that on a shared machine both see the same background load; ``--repeat`` passes are timed (3 by
default: one pass is under a second batched). Prints rows/s of both, the speed-up
(target >= 5x) and the share of rows with identical outputs (target >= 99%), as decoded answers
and as token ids. Where tokens differ, the first differing step is re-scored without padding: a
near tie between the top two logits there points at float round-off, a wide gap at a padding bug.
``--train-steps 0`` is the harder identity check (every row decodes all max_new_tokens steps).
On a 2-core machine that other jobs also load, ``--threads 1`` avoids OpenMP stalls that make
every small matmul hundreds of times slower and the timings erratic.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # medvl from this checkout, and bench_models beside this script
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def train_adapter(cache_dir: Path, out: Path, steps: int, batch_size: int, data: list[str]) -> Path:
    from medvl.training.run import train

    cfg = compose("train", [f"cache_dir={cache_dir}", f"output_dir={out}", f"trainer.max_steps={steps}",
                            f"trainer.per_device_train_batch_size={batch_size}", "trainer.save_steps=100000",
                            "trainer.logging_steps=50", *data])
    start = time.perf_counter()
    metrics = train(cfg)
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s (train_loss {metrics['train_loss']:.3f})")
    return out


class TokenRecorder:
    """Stands in for ``model.generate`` and keeps each row's new token ids (through the first EOS)."""

    def __init__(self, model, eos_token_id: int):
        self.generate = model.generate
        self.eos = eos_token_id
        self.rows: list[list[int]] = []
        model.generate = self  # an instance attribute: generate_batch calls it like the method

    def __call__(self, **kwargs):
        out = self.generate(**kwargs)
        for seq in out[:, kwargs["input_ids"].shape[1]:].tolist():
            self.rows.append(seq[: seq.index(self.eos) + 1] if self.eos in seq else seq)
        return out


def first_difference(model, processor, row, image_root, batched: list[int], single: list[int]) -> str:
    """The first step where the two token sequences part, and the top-2 logit gap there (unpadded)."""
    import torch

    from medvl.data.dataset import Collator, encode

    tok = processor.tokenizer
    step = next((i for i, (x, y) in enumerate(zip(batched, single)) if x != y), min(len(batched), len(single)))
    item = encode(row, processor, image_root, with_answer=False)
    prefix = torch.tensor(single[:step], dtype=torch.long)
    item["input_ids"] = torch.cat([item["input_ids"], prefix])
    item["labels"] = torch.full_like(item["input_ids"], -100)
    if "mm_token_type_ids" in item:
        item["mm_token_type_ids"] = torch.cat([item["mm_token_type_ids"], torch.zeros_like(prefix)])
    batch = Collator(tok.pad_token_id)([item])
    batch.pop("labels")
    with torch.inference_mode():
        logits = model(**batch).logits[0, -1].float()
    top = torch.topk(logits, 2)
    return (f"step {step}: batched {tok.decode(batched[step:step + 1])!r}, single "
            f"{tok.decode(single[step:step + 1])!r}; top-2 logit gap there {float(top.values[0] - top.values[1]):.2e}")


def main(argv: list[str] | None = None) -> list[dict] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true",
                        help="2B- and 7B-sized random-weight models in bf16 on a CUDA GPU (see above)")
    parser.add_argument("--smoke", action="store_true", help="the --gpu path on the CPU at tiny sizes, float32")
    parser.add_argument("--rows", type=int, default=None, help="rows to decode (default: 300; --gpu: 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="medvl.eval's default")
    parser.add_argument("--models", default="2b,7b", help="--gpu: bench_models.SPECS keys, in order")
    parser.add_argument("--single-rows", type=int, default=None,
                        help="--gpu: decode (and compare) only the first N rows one at a time (default: all)")
    parser.add_argument("--budget-s", type=float, default=240, help="--gpu: skip the models left after this")
    parser.add_argument("--json", type=Path, help="--gpu/--smoke: also write the results here")
    parser.add_argument("--train-steps", type=int, default=150, help="0: evaluate the untrained tiny model")
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--cache-dir", type=Path, default=None, help="tiny model and synth data (default: temp)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where the adapter is trained (default: temp); an existing run there is reused")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed passes over the rows (the two modes alternate within each); outputs of pass 1")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a busy machine 1 avoids OpenMP stalls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.gpu or args.smoke:
        from eval_generation_gpu import gpu_main

        return gpu_main(args)
    args.rows = args.rows or 300
    cpu_main(args)
    return None


def cpu_main(args: argparse.Namespace) -> None:
    """The tiny model with a briefly trained adapter on synth rows, on the CPU (module docstring)."""
    import torch

    from medvl.data.splits import load_split
    from medvl.evaluation.generate import generate, generate_batch, iter_batches
    from medvl.evaluation.run import load_for_eval
    from medvl.runs import RunDir

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="medvl-eval-generation-") as tmp:
        cache_dir = args.cache_dir or Path(tmp) / "cache"
        os.environ["MEDVL_CACHE"] = str(cache_dir)
        # Train on 3000 synth rows; evaluate on the first --rows of its test split.
        data = ["data.num_train=3000", f"data.num_test={max(args.rows, 300)}"]
        cfg = compose("eval", [f"cache_dir={cache_dir}", f"output_dir={tmp}/eval", *data])
        ckpt = None
        run_dir = args.run_dir or Path(tmp) / "run"
        if args.train_steps > 0 and (run_dir / "adapter").is_dir():
            ckpt = RunDir.from_ckpt(run_dir)
            print(f"reusing the adapter in {run_dir}")
        elif args.train_steps > 0:
            ckpt = RunDir.from_ckpt(train_adapter(cache_dir, run_dir, args.train_steps, args.train_batch_size,
                                                    data))
        model, processor = load_for_eval(cfg, ckpt)
        model.eval()
        rows = load_split(cfg.data, "test")[: args.rows]
        root = cfg.data.root
        kwargs = dict(max_new_tokens=args.max_new_tokens)
        print(f"{len(rows)} rows, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
              f"{torch.get_num_threads()} torch threads, {'adapter' if ckpt else 'untrained'} tiny Qwen2-VL")

        # Warm both paths up (first calls pay for kernels and allocator growth).
        generate(model, processor, rows[: args.batch_size], root, batch_size=args.batch_size, **kwargs)
        generate_batch(model, processor, rows[:1], root, **kwargs)
        recorder = TokenRecorder(model, processor.tokenizer.eos_token_id)

        # Chunk by chunk, batched then one at a time over the same rows: on a shared machine both
        # modes then see the same background load, which a run of each in turn would not.
        batched, single, batched_tokens, single_tokens = [], [], [], []
        t_batched = t_single = 0.0
        load_before = os.getloadavg()[0]
        for chunk in [chunk for _ in range(args.repeat) for chunk in iter_batches(rows, args.batch_size)]:
            recorder.rows = []
            start = time.perf_counter()
            batched += generate_batch(model, processor, chunk, root, **kwargs)
            t_batched += time.perf_counter() - start
            batched_tokens += recorder.rows
            recorder.rows = []
            start = time.perf_counter()
            single += [generate_batch(model, processor, [row], root, **kwargs)[0] for row in chunk]
            t_single += time.perf_counter() - start
            single_tokens += recorder.rows
        # Greedy decoding is deterministic: later passes must repeat the first exactly.
        n = len(rows)
        repeats_agree = all(batched[k * n : (k + 1) * n] == batched[:n] for k in range(args.repeat))
        batched, single, batched_tokens, single_tokens = batched[:n], single[:n], batched_tokens[:n], single_tokens[:n]
        print(f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")

        same = sum(a == b for a, b in zip(batched, single))
        same_tokens = sum(a == b for a, b in zip(batched_tokens, single_tokens))
        lengths = [len(t) for t in single_tokens]
        done = n * args.repeat
        print(f"one at a time: {done / t_single:8.1f} rows/s  ({t_single:.1f} s for {args.repeat} x {n} rows)")
        print(f"batched ({args.batch_size}):  {done / t_batched:8.1f} rows/s  ({t_batched:.1f} s)")
        print(f"passes agree:  {'yes' if repeats_agree else 'NO'}")
        print(f"speed-up:      {t_single / t_batched:8.2f}x  (target >= 5x)")
        print(f"identical:     {same / n:8.2%}  ({same}/{n} decoded answers, {same_tokens}/{n} token "
              f"sequences; target >= 99%)")
        print(f"new tokens per row (EOS included): mean {sum(lengths) / n:.1f}, max {max(lengths)}; "
              f"{sum(x >= args.max_new_tokens for x in lengths)} rows stopped at max_new_tokens")
        print(f"distinct answers: {len(set(single))}; most common: {Counter(single).most_common(3)}")
        differ = [i for i in range(n) if batched_tokens[i] != single_tokens[i]]
        for i in differ[:10]:
            where = first_difference(model, processor, rows[i], root, batched_tokens[i], single_tokens[i])
            print(f"  {rows[i]['id']}: {where}")

if __name__ == "__main__":
    main()
