"""``eval_generation.py --gpu`` / ``--smoke``: medvl's batched greedy generation against one row at a time on
random-weight models of the published configs (see eval_generation.py's docstring for what it measures)."""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from bench_models import (
    IGNORE,
    SMOKE_SPECS,
    SPECS,
    Spec,
    attention_label,
    build_random,
    make_rows,
    with_medvl_vision_attention,
)

#: What "identical" means in the output: the same token ids, row by row.
IDENTICAL = ("identical = the same new token ids, through the first stop token, when the row is decoded in a "
             "left-padded batch and alone (batch of 1, no padding)")


def prompts(spec: Spec, n: int, image_tokens: tuple[int, int]) -> list[dict]:
    """``n`` Slake-like prompts, encoded as medvl's ``encode_prompts`` yields them: bench_models' rows cut before
    their answer (the first labelled token)."""
    items = []
    for row in make_rows(spec, n, image_tokens):
        cut = int((row["labels"] != IGNORE).nonzero()[0])
        items.append({"input_ids": row["input_ids"][:cut], "labels": torch.full((cut,), IGNORE),
                      "mm_token_type_ids": row["mm_token_type_ids"][:cut], "pixel_values": row["pixel_values"],
                      "image_grid_thw": row["image_grid_thw"]})
    return items


def through_stop(tokens: list[int], stop: int) -> list[int]:
    """A row's new tokens through the first stop token (what follows it is the batch's padding)."""
    return tokens[: tokens.index(stop) + 1] if stop in tokens else tokens


def top2_gap(model, item: dict, prefix: list[int]) -> float:
    """The gap between the top two logits after ``item``'s prompt and ``prefix``, the row alone (no padding)."""
    from medvl.data.dataset import Collator

    ids = torch.tensor(prefix, dtype=torch.long)
    row = dict(item, input_ids=torch.cat([item["input_ids"], ids]), labels=torch.full((len(item["input_ids"]) +
               len(ids),), IGNORE), mm_token_type_ids=torch.cat([item["mm_token_type_ids"], torch.zeros_like(ids)]))
    batch = Collator(0)([row])
    batch.pop("labels")
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def bench_model(key: str, spec: Spec, args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict:
    """Rows/s of batched and one-at-a-time decoding of one model, and how many rows agree token for token."""
    from medvl.evaluation.generate import generate_tokens, iter_batches
    from medvl.models.speed import resolve_attn_implementation

    torch.manual_seed(0)
    attn = resolve_attn_implementation("auto", dtype)
    model = with_medvl_vision_attention(build_random(spec, dtype, device, attn), "auto", attn, dtype).eval()
    # Qwen's tokenizer pads with <|endoftext|> (the bos id here) and stops an answer at <|im_end|> (eos).
    pad, stop = spec.ids["bos_token_id"], spec.ids["eos_token_id"]
    items = prompts(spec, args.rows, (4, 16) if args.smoke else (256, 1280))

    def decode(chunk: list[dict]) -> list[list[int]]:
        out = generate_tokens(model, chunk, pad_token_id=pad, eos_token_id=[stop],
                              max_new_tokens=args.max_new_tokens)
        return [through_stop(t, stop) for t in out.tolist()]  # .tolist() waits for the GPU

    decode(items[: args.batch_size]), decode(items[:1])  # warm-up: kernels, allocator growth
    start = time.perf_counter()
    batched = [t for chunk in iter_batches(items, args.batch_size) for t in decode(chunk)]
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    # One at a time is the slow path: --single-rows times (and compares) it on the first rows only.
    single = [decode([item])[0] for item in items[: args.single_rows or len(items)]]
    t_single = time.perf_counter() - start

    differ = [i for i, (a, b) in enumerate(zip(batched, single)) if a != b]
    prefix = [next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
              for a, b in zip(batched, single)]
    examples = []
    for i in differ[:3]:
        step = prefix[i]
        examples.append({"row": i, "step": step, "top2_logit_gap": top2_gap(model, items[i], single[i][:step])})
    n, m = len(items), len(single)
    result = {"model": key, "source": spec.source, "attn": attention_label(model),
              "dtype": str(dtype).removeprefix("torch."), "rows": n, "rows_single": m, "batch_size": args.batch_size,
              "max_new_tokens": args.max_new_tokens,
              "prompt_tokens_mean": sum(len(it["input_ids"]) for it in items) / n,
              "new_tokens_mean": sum(map(len, single)) / m,
              "rows_per_s_batched": n / t_batched, "rows_per_s_single": m / t_single,
              "speedup": (n / t_batched) / (m / t_single),
              "identical_rows": m - len(differ), "identical_share": (m - len(differ)) / m,
              "agreed_prefix_mean": sum(prefix) / m, "first_differences": examples}
    return result


def print_result(r: dict) -> None:
    if "skipped" in r or "failed" in r:
        print(f"{r['model']}: {'skipped' if 'skipped' in r else 'failed'}: {r.get('skipped') or r.get('failed')}")
        return
    print(f"{r['model']} ({r['source']}; {r['dtype']}, {r['attn']}): {r['rows']} rows, prompts of "
          f"{r['prompt_tokens_mean']:.0f} tokens on average, {r['new_tokens_mean']:.1f} new tokens per row")
    print(f"  one at a time: {r['rows_per_s_single']:8.2f} rows/s  ({r['rows_single']} rows)")
    print(f"  batched ({r['batch_size']}):  {r['rows_per_s_batched']:8.2f} rows/s  ({r['rows']} rows)")
    print(f"  speed-up:      {r['speedup']:8.2f}x")
    print(f"  identical:     {r['identical_share']:8.2%}  ({r['identical_rows']}/{r['rows_single']} token sequences; "
          f"first {r['agreed_prefix_mean']:.1f} tokens agree on average)")
    for d in r["first_differences"]:
        print(f"    row {d['row']}: parts at step {d['step']}, top-2 logit gap there {d['top2_logit_gap']:.2e}")


def gpu_main(args: argparse.Namespace) -> list[dict]:
    """Each model of ``--models`` in turn; the models left when ``--budget-s`` is spent are skipped."""
    if args.smoke:
        device, dtype, specs = "cpu", torch.float32, SMOKE_SPECS
        args.rows, args.batch_size, args.max_new_tokens = args.rows or 6, min(args.batch_size, 4), 4
    elif torch.cuda.is_available():
        device, dtype, specs = "cuda", torch.bfloat16, SPECS
        args.rows = args.rows or 32
    else:
        raise SystemExit("eval_generation.py --gpu needs a CUDA GPU (or --smoke for the CPU check)")
    name = "CPU (smoke: tiny models, not a measurement)" if args.smoke else torch.cuda.get_device_name()
    print(f"{name}; torch {torch.__version__}; greedy, KV cache, max_new_tokens {args.max_new_tokens}, "
          f"batch {args.batch_size} vs 1; random weights of the published configs")
    print(IDENTICAL)
    started, results = time.perf_counter(), []
    for key in args.models.split(","):
        if time.perf_counter() - started > args.budget_s:
            results.append({"model": key, "skipped": f"time budget of {args.budget_s:.0f} s spent"})
        else:
            try:
                results.append(bench_model(key, specs[key], args, device, dtype))
            except Exception as exc:  # noqa: BLE001 - one model's failure (out of memory, a kernel) ends only it
                results.append({"model": key, "failed": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                                if str(exc) else type(exc).__name__})
        print_result(results[-1])
        gc.collect()  # the model before the next one is built
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "identical_means": IDENTICAL, "models": results}, indent=2))
    return results
