"""What encoding rows costs at the real presets' pixel budgets, and how much of it medvl takes off the GPU's path.

    python benchmarks/data_loading.py            # 64 rows of 1024x1024 JPEGs; about a minute on 2 cores
    python benchmarks/data_loading.py --smoke    # 6 small rows: checks the script (tests/test_data_loading_bench.py)

All on the CPU, side by side in one run, with medvl's own code and the processor class of each family (the tiny
offline models' processors, set to the preset's ``min_pixels``/``max_pixels``: the image processing is the real
models', only the vocabulary is small):

1. **Encode cost per row** (``medvl.data.dataset.encode``: decode, resize to the pixel budget, patchify, tokenize),
   for the presets ``7b`` (Qwen2-VL, 1280 image tokens of 28x28 pixels) and ``qwen3_vl_8b`` (Qwen3-VL, 32x32).
2. **Training steps**: seconds per batch of a loop over the training DataLoader (``VQADataset`` + the collator,
   batch 8) whose step is ``--step-s`` of waiting, standing for the GPU's step (the training process waits on the
   device), with 0, 1 and 2 worker processes (``trainer.dataloader_num_workers``; ``null`` gives up to 4 per GPU
   rank). With none, every step pays the encoding on top; with workers it overlaps the step.
3. **Evaluation encoding**: rows/s of encoding what evaluation feeds the model (generation's prompts and
   perplexity's whole first turns): each encoded on its own, as before (the images processed twice), against
   ``encode_chunk`` (once).

4. **Evaluation loop on the CPU** (``answer_chunks``: generation of ``--new-tokens`` tokens and perplexity, the
   tiny model itself): rows/s with each batch encoded in turn (the CPU default) and encoded in a background
   thread (the GPU default), alternated twice. On the CPU the model and the encoder share the cores.

What the GPU then does with the rows is not measured here: a 7B LoRA step of 8 such rows takes on the order of a
second on an H100-class GPU, so the per-row cost times 8 says how much of a step in-process encoding would add.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # medvl from this checkout, and eval_generation beside this script

from eval_generation import compose  # noqa: E402 - after the path

#: preset -> the tiny offline model of the same family (same processor classes).
PRESETS = {"7b": "tiny", "qwen3_vl_8b": "tiny3"}
QUESTIONS = ["What organ is shown in this image?", "Is there an abnormality in the left lung?",
             "Which imaging modality was used?", "Where is the lesion located?"]
ANSWERS = ["the liver", "yes", "CT", "right upper lobe"]


def make_rows(root: Path, n: int, size: int) -> list[dict]:
    """``n`` Slake-like rows with their own ``size`` x ``size`` JPEGs (noise over a gradient: photograph-like
    JPEG sizes and decode times, unlike flat colours)."""
    import numpy as np
    from PIL import Image

    from medvl.data.format import make_row

    generator = np.random.default_rng(0)
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    rows = []
    for i in range(n):
        pixels = ramp[None, :, None] + generator.normal(0, 25, (size, size, 3))
        Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(root / f"img_{i}.jpg", quality=90)
        rows.append(make_row(f"row-{i}", f"img_{i}.jpg", QUESTIONS[i % 4], ANSWERS[i % 4]))
    return rows


def processor_for(preset: str, cache: Path):
    """The family's processor (its tiny offline model's) at ``preset``'s pixel budget."""
    from medvl.models.loading import load_processor

    real = compose("train", [f"model={preset}"]).model
    tiny = compose("train", [f"model={PRESETS[preset]}", f"cache_dir={cache}", f"model.min_pixels={real.min_pixels}",
                    f"model.max_pixels={real.max_pixels}"]).model
    return load_processor(tiny), real.max_pixels


def encode_cost(processor, rows: list[dict], root: Path) -> tuple[float, int]:
    """Median milliseconds per row of ``encode``, and the image tokens of the last row."""
    from medvl.data.dataset import encode

    encode(rows[0], processor, root)  # warm-up
    times, item = [], None
    for row in rows:
        start = time.perf_counter()
        item = encode(row, processor, root)
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * times[len(times) // 2], int(item["mm_token_type_ids"].sum())


def loader_rate(processor, rows: list[dict], root: Path, workers: int, batch: int, step_s: float) -> float:
    """Seconds per batch of a training loop over ``rows`` whose step is ``step_s`` of waiting (a GPU step: the
    training process waits on the device while the workers encode), the first batch (workers starting) excluded."""
    import torch

    from medvl.data.dataset import Collator, VQADataset

    dataset = VQADataset(rows, processor, root)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                         collate_fn=Collator(processor.tokenizer.pad_token_id))
    batches = iter(loader)
    next(batches)
    start, n = time.perf_counter(), 0
    for _ in batches:
        time.sleep(step_s)
        n += 1
    return (time.perf_counter() - start) / n


def eval_encode_rates(processor, rows: list[dict], root: Path, batch: int) -> tuple[float, float]:
    """Rows/s of encoding evaluation's inputs: prompts and whole first turns each encoded on their own, and
    ``encode_chunk`` (the images processed once)."""
    from medvl.data.dataset import encode, encode_prompts, first_turn
    from medvl.evaluation.generate import encode_chunk, iter_batches

    chunks = list(iter_batches(rows, batch))
    start = time.perf_counter()
    for chunk in chunks:
        encode_prompts(chunk, processor, root)
        [encode(first_turn(row), processor, root) for row in chunk]
    twice = len(rows) / (time.perf_counter() - start)
    start = time.perf_counter()
    for chunk in chunks:
        encode_chunk(chunk, processor, root, system_prompt=None, with_answers=True)
    once = len(rows) / (time.perf_counter() - start)
    return twice, once


def eval_loop_rates(tiny: str, processor, rows: list[dict], root: Path, batch: int, new_tokens: int,
                    cache: Path) -> dict[str, list[float]]:
    """Rows/s of ``answer_chunks`` on the CPU with the tiny model, batches encoded in turn and in the background."""
    from medvl.evaluation.generate import answer_chunks, iter_batches
    from medvl.models.loading import load_model

    model = load_model(compose("train", [f"model={tiny}", f"cache_dir={cache}"]).model)
    chunks = list(iter_batches(rows, batch))
    rates: dict[str, list[float]] = {"in turn": [], "background": []}
    for _ in range(2):
        for name, background in (("in turn", False), ("background", True)):
            start = time.perf_counter()
            for _ in answer_chunks(model, processor, chunks, root, max_new_tokens=new_tokens, perplexity=True,
                                   background=background):
                pass
            rates[name].append(len(rows) / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step-s", type=float, default=0.3, help="the simulated GPU step per batch, in seconds")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per row in the evaluation loop")
    parser.add_argument("--smoke", action="store_true", help="6 rows of 128x128 images, 0 and 1 workers")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.size, args.batch, args.workers, args.step_s = 6, 128, 2, [0, 1], 0.01
    results: dict = {"cpus": len(os.sched_getaffinity(0)), "rows": args.rows, "size": args.size, "presets": {}}
    print(f"{results['cpus']} CPUs; {args.rows} rows of {args.size}x{args.size} JPEGs; batch {args.batch}")
    with tempfile.TemporaryDirectory(prefix="medvl-data-loading-") as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        root.mkdir()
        rows = make_rows(root, args.rows, args.size)
        for preset in PRESETS:
            processor, max_pixels = processor_for(preset, cache)
            ms, tokens = encode_cost(processor, rows, root)
            step_times = {w: loader_rate(processor, rows, root, w, args.batch, args.step_s) for w in args.workers}
            twice, once = eval_encode_rates(processor, rows, root, args.batch)
            loop = eval_loop_rates(PRESETS[preset], processor, rows, root, args.batch, args.new_tokens, cache)
            results["presets"][preset] = {"max_pixels": max_pixels, "image_tokens": tokens, "encode_ms": ms,
                                          "eval_loop_rows_per_s": loop,
                                          "step_s": args.step_s, "loop_s_per_batch": step_times,
                                          "eval_rows_per_s_twice": twice,
                                          "eval_rows_per_s_once": once}
            print(f"\nmodel={preset} (max_pixels {max_pixels}: {tokens} image tokens per row here)")
            print(f"  encode: {ms:.1f} ms per row (median) -> {args.batch * ms / 1000:.2f} s of CPU per batch of "
                  f"{args.batch} in the training process")
            for w, took in step_times.items():
                print(f"  training loop with a {args.step_s:.2f} s step, {w} worker(s): {took:.3f} s per batch "
                      f"({step_times[args.workers[0]] / took:.2f}x)")
            print(f"  evaluation encoding: {twice:.1f} rows/s with the images processed twice, {once:.1f} rows/s "
                  f"once ({once / twice:.2f}x)")
            print("  evaluation loop, tiny model on this CPU: " + ", ".join(
                f"{name} {' / '.join(f'{r:.1f}' for r in values)} rows/s" for name, values in loop.items()))
    return results


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the loaders' progress lines; not in main(): tests call it in their process
    main()
