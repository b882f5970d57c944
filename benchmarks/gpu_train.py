"""Tokens/s, MFU and peak memory of medvl's own training setup on one GPU, on random-weight models built from
the published configs (no download), for padded vs packed batches (packed rows kept apart by a varlen kernel, or by
SDPA's block-diagonal mask), Liger on/off and LoRA vs QLoRA.

    python benchmarks/gpu_train.py                   # the whole benchmark: under 8 minutes on one H200
    python benchmarks/gpu_train.py --only 7b         # configurations whose name contains "7b"
    python benchmarks/gpu_train.py --smoke           # end to end on the CPU at tiny sizes, float32, in seconds

What runs is medvl's own: each configuration's training config is composed from conf/ (``model=<preset>
stage=instruct lora=attn_ffn`` plus its options) and checked by ``validate_training`` as ``medvl.train`` checks it
(a refusal, e.g. Liger or QLoRA on the CPU, is printed as the reason it was skipped); the model goes through
``medvl.training.run.setup_for_training`` (Liger, QLoRA's preparation, LoRA, float32 trainable weights, gradient
checkpointing), and trains with medvl's training arguments, Trainer and collator (``trainer.packing``'s when
packed), the collator in medvl.train's dataloader worker processes (``--workers N`` to change). The vision tower's
attention is set as medvl's loader sets it. QLoRA loads through ``medvl.models.loading.load_model`` from a saved
copy of the random weights, as a hub checkpoint loads. Timed: ``--steps`` optimizer steps after ``--warmup``
(data loading included).

Data: Slake-like rows, one image of 256-1280 image tokens (uniform; 4 patches each) with a 8-24 token question and
a 1-6 token answer (the loss is on the answer), inside the chat template's tokens.

MFU = FLOPs a step needs / step time / the bf16 matmul rate measured in this run (torch.matmul of 8192^3 in a
loop). FLOPs per row of L tokens, T answer (label) tokens, I image tokens and P = 4I patches:
    k*N_llm*L + k*N_head*T + 6*N_lora*L + 6*layers*d_attn*L^2    (language model; causal attention, fwd + bwd)
    + 2*N_vision*P + 2*N_merger*I + 4*depth*d_vision*P*A         (vision tower, frozen: forward only; A = P, or the
                                                                  window's patches in Qwen2.5-VL's windowed blocks)
k = 4 for a frozen base under LoRA (forward 2N, backward 2N for the input gradients, no weight gradients), 6 for
full fine-tuning; N_llm counts the decoder layers (not the embedding lookup), N_head the output head, which a
step needs only where a label is predicted (medvl.training.loss runs it there, with Liger too). Padding and the
recomputation of gradient checkpointing are not counted: they are work a step does, not work it needs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # medvl from this checkout, and bench_models beside this script

from bench_models import (  # noqa: E402
    IGNORE,
    SMOKE_SPECS,
    SPECS,
    Counts,
    Spec,
    attention_label,
    build_random,
    make_rows,
    with_medvl_vision_attention,
)


@dataclass
class Run:
    """One configuration: a model, medvl config overrides, and the rows per optimizer step."""

    name: str
    model: str
    overrides: list[str]
    batch: int = 8


# LoRA runs without gradient checkpointing (an H200 holds a 7B LoRA step without it; the presets turn it on from
# 7B up for smaller cards), QLoRA runs with it, at 4 rows a step: the 24 GB-card setting.
LORA, PACKED = ["trainer.gradient_checkpointing=false"], ["trainer.packing=true"]
QLORA, LIGER = ["lora.qlora=true", "trainer.gradient_checkpointing=true"], ["trainer.liger=true"]
# Liger patches the family's transformers module as well as the model: each family's Liger runs come after its
# other runs. The targets' runs come first; the --budget-s guard skips the last ones if time runs short.
RUNS = [
    Run("7b lora padded random-order", "7b", LORA + ["trainer.group_by_length=false"]),
    Run("7b lora padded length-grouped", "7b", LORA),
    Run("7b lora packed", "7b", LORA + PACKED),
    Run("7b qlora+ckpt packed b4", "7b", QLORA + PACKED, batch=4),
    # Packed rows kept apart by SDPA's block-diagonal mask instead of a varlen kernel (what "7b lora packed" runs
    # under auto without flash_attn: torch_varlen where PyTorch's kernel runs).
    Run("7b lora packed sdpa-mask", "7b", LORA + PACKED + ["model.attn_implementation=sdpa"]),
    Run("7b lora packed liger", "7b", LORA + PACKED + LIGER),
    Run("2b lora padded length-grouped", "2b", LORA),
    Run("2b lora packed", "2b", LORA + PACKED),
    Run("2b lora packed liger", "2b", LORA + PACKED + LIGER),
    Run("8b lora padded length-grouped", "8b", LORA),
    Run("8b lora packed", "8b", LORA + PACKED),
    Run("8b lora packed liger", "8b", LORA + PACKED + LIGER),
    Run("7b qlora+ckpt packed liger b4", "7b", QLORA + PACKED + LIGER, batch=4),
]


class Skip(Exception):
    """A configuration this machine or this medvl cannot run; the message says why."""


def compose_config(run: Run, spec: Spec, work: Path, steps: int, batch: int, workers: int | None = None):
    """The run's medvl training config, composed from conf/ and validated as ``medvl.train`` validates it; its
    dataloader workers are medvl.train's default (on a GPU machine, worker processes collate the batches) unless
    ``workers`` is given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR, ConfigError
    from medvl.training.checks import validate_training

    overrides = [f"model={spec.preset}", "stage=instruct", "lora=attn_ffn", "logger=none",
                 f"trainer.per_device_train_batch_size={batch}", f"trainer.max_steps={steps}",
                 "trainer.logging_steps=100000", "trainer.save_steps=100000", "trainer.warmup_ratio=0",
                 "trainer.eval_steps=0", f"output_dir={work / 'run'}", f"cache_dir={work}",
                 *([] if workers is None else [f"trainer.dataloader_num_workers={workers}"]), *run.overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        validate_training(cfg)
    except ConfigError as exc:
        raise Skip(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - an option this medvl lacks (e.g. trainer.packing before it landed)
        raise Skip(f"not available in this medvl: {str(exc).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


class Rows(torch.utils.data.Dataset):
    """Encoded rows with their lengths, which medvl's Trainer groups batches by (trainer.group_by_length)."""

    def __init__(self, rows: list[dict]):
        self.rows, self.lengths = rows, [len(r["input_ids"]) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class Counting:
    """Real tokens and needed FLOPs of each batch, in the order the Trainer trains on them.

    The collator may run in DataLoader worker processes (as in medvl.train): it puts the batch's two numbers into
    the batch itself (a float64 pair under :data:`COUNTS`), and the training step, in this process, takes them off
    before the model sees the batch (:meth:`take`). They are read once training is over (not with a ``.item()``
    per step). One batch per optimizer step: the benchmark trains without gradient accumulation.
    """

    def __init__(self, collate, flops):
        self.collate, self.flops, self.counted = collate, flops, []

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collate(items)
        batch[COUNTS] = torch.tensor([sum(len(it["input_ids"]) for it in items), sum(self.flops(it) for it in items)],
                                     dtype=torch.float64)
        return batch

    def take(self, batch: dict) -> dict:
        self.counted.append(batch.pop(COUNTS))
        return batch

    def around(self, training_step):
        """``trainer.training_step``, taking each batch's counts off first."""
        return lambda model, inputs, *args, **kwargs: training_step(model, self.take(inputs), *args, **kwargs)

    @property
    def batches(self) -> list[tuple[float, float]]:
        return [tuple(pair.tolist()) for pair in self.counted]


#: The batch key :class:`Counting` carries a batch's tokens and FLOPs under.
COUNTS = "medvl_benchmark_counts"


def step_timer(warmup: int, steps: int, sync):
    """A TrainerCallback that times the optimizer steps after ``warmup`` (their data loading included)."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        start = end = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, warmup + steps):
                sync()
                setattr(self, "start" if state.global_step == warmup else "end", time.perf_counter())

    return Timer()


def matmul_rate(device: str, dtype: torch.dtype, n: int, iters: int) -> float:
    """FLOP/s of ``torch.matmul`` on n x n matrices (best of three loops): the peak MFU is measured against."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = 0.0
    for _ in range(3):
        a @ b
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync()
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    return best


@dataclass
class Options:
    device: str
    dtype: torch.dtype
    warmup: int
    steps: int
    image_tokens: tuple[int, int]
    work: Path
    specs: dict[str, Spec]
    max_batch: int = 1 << 30  # --smoke: 2 rows a step
    workers: int | None = None  # dataloader workers; None: medvl.train's default


def saved_copy(spec: Spec, key: str, opts: Options) -> Path:
    """Random weights of ``spec`` written once with save_pretrained, as a checkpoint on the hub is: QLoRA loads
    them through medvl's loader, quantizing as they load."""
    path = opts.work / f"{key}-weights"
    if not path.exists():
        model = build_random(spec, opts.dtype, opts.device)
        model.save_pretrained(path)
        del model
        gc.collect()
        if opts.device == "cuda":
            torch.cuda.empty_cache()
    return path


def load_for_run(cfg, spec: Spec, key: str, opts: Options):
    """The run's model as medvl trains it: random weights of ``spec``, or for QLoRA medvl's 4-bit load of a saved
    copy of them; then ``setup_for_training``."""
    from medvl.models.speed import quantization_config, resolve_attn_implementation
    from medvl.training.run import setup_for_training, training_model_config

    if cfg.lora.qlora:
        from medvl.models.loading import load_model

        model = load_model(training_model_config(cfg), str(saved_copy(spec, key, opts)),
                           quantization_config=quantization_config(cfg))
    else:
        # As medvl.train resolves it (trainer.packing's auto may take torch_varlen), and as its loader sets the
        # vision tower's attention.
        requested = str(training_model_config(cfg).attn_implementation)
        attn = resolve_attn_implementation(requested, opts.dtype)
        model = with_medvl_vision_attention(build_random(spec, opts.dtype, opts.device, attn), requested, attn,
                                            opts.dtype)
    return setup_for_training(model, cfg)


def collator(cfg, model):
    """medvl's training collator: padded, or trainer.packing's packed rows."""
    try:
        from medvl.training.packing import train_collator
    except ImportError:  # before trainer.packing landed: padded only (the packed runs were skipped at compose)
        from medvl.data.dataset import Collator

        return Collator(0)
    return train_collator(cfg, SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0)), model)


def run_one(run: Run, counts: Counts, opts: Options) -> dict:
    """Train ``run`` for warmup + steps optimizer steps; its tokens/s, MFU inputs and peak memory."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from medvl.training.run import build_trainer, training_arguments

    spec, batch = opts.specs[run.model], min(run.batch, opts.max_batch)
    cfg = compose_config(run, spec, opts.work, opts.warmup + opts.steps, batch, opts.workers)
    cuda = opts.device == "cuda"
    if cfg.lora.qlora:
        saved_copy(spec, run.model, opts)  # before the peak is reset: writing it holds the bf16 model
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = load_for_run(cfg, spec, run.model, opts)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = make_rows(spec, batch * (opts.warmup + opts.steps), opts.image_tokens)
    counting = Counting(collator(cfg, model), lambda it: counts.row_flops(
        len(it["input_ids"]), int(it["mm_token_type_ids"].sum()), n_lora, int((it["labels"] != IGNORE).sum())))
    timer = step_timer(opts.warmup, opts.steps, torch.cuda.synchronize if cuda else (lambda: None))
    trainer = build_trainer(cfg, model, training_arguments(cfg, opts.work / "run"), Rows(rows), counting, [timer])
    trainer.training_step = counting.around(trainer.training_step)
    assert trainer.args.gradient_accumulation_steps == 1, "the step timer counts one batch per optimizer step"
    for quiet in (ProgressCallback, PrinterCallback):  # one table line per configuration, no progress bars
        trainer.remove_callback(quiet)
    trainer.train()
    seconds = timer.end - timer.start
    timed = counting.batches[opts.warmup: opts.warmup + opts.steps]
    if len(timed) != opts.steps or not seconds > 0:
        raise RuntimeError(f"counted {len(timed)} of {opts.steps} timed batches in {seconds:.3f} s")
    result = {"name": run.name, "rows_per_step": batch, "attn": attention_label(model),
              "step_s": seconds / opts.steps, "tokens_per_s": sum(t for t, _ in timed) / seconds,
              "flops_per_s": sum(f for _, f in timed) / seconds,
              "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
              "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}
    trainer.accelerator.free_memory()
    del trainer, model, counting
    return result


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def print_row(r: dict, peak: float) -> None:
    for outcome in ("skipped", "failed"):
        if outcome in r:
            print(f"{r['name']:<32} {outcome}: {r[outcome]}", flush=True)
            return
    print(f"{r['name']:<32} {r['attn']:<26} {r['rows_per_step']:>4} {r['step_s']:>7.3f} {r['tokens_per_s']:>10,.0f} "
          f"{100 * r['flops_per_s'] / peak:>6.1f}% {_gib(r['peak_allocated_gib']):>7} "
          f"{_gib(r['peak_reserved_gib']):>8}", flush=True)


def targets(results: dict[str, dict], peak: float) -> list[str]:
    """The issue's targets as ratios from this run: measured / target (>= 1 passes; memory: < 1 passes)."""
    def got(*names: str) -> list[dict]:
        return [results[n] for n in names if n in results and results[n].get("tokens_per_s")]

    lines = []
    packed = got("7b lora packed", "7b lora packed liger")
    if packed:
        best = max(packed, key=lambda r: r["flops_per_s"])
        mfu = best["flops_per_s"] / peak
        lines.append(f"7B LoRA packed MFU >= 45%: {100 * mfu:.1f}% ({best['name']}) -> {mfu / 0.45:.2f} "
                     f"{'PASS' if mfu >= 0.45 else 'FAIL'}")
    for baseline in ("7b lora padded length-grouped", "7b lora padded random-order"):
        pair = got("7b lora packed", baseline)
        if len(pair) == 2:
            speedup = pair[0]["tokens_per_s"] / pair[1]["tokens_per_s"]
            lines.append(f"packed >= 1.5x padded tokens/s (vs {baseline}): {speedup:.2f}x -> {speedup / 1.5:.2f} "
                         f"{'PASS' if speedup >= 1.5 else 'FAIL'}")
    qlora = [r for r in got("7b qlora+ckpt packed b4", "7b qlora+ckpt packed liger b4") if r["peak_reserved_gib"]]
    if qlora:
        best = min(qlora, key=lambda r: r["peak_reserved_gib"])
        ratio = best["peak_reserved_gib"] / 24
        lines.append(f"7B QLoRA+grad-ckpt peak reserved < 24 GiB: {best['peak_reserved_gib']:.1f} GiB "
                     f"({best['name']}) -> {ratio:.2f} {'PASS' if ratio < 1 else 'FAIL'}")
    return lines or ["no target could be measured (their configurations were skipped)"]


def options(args, work: Path) -> Options:
    if args.smoke:
        return Options("cpu", torch.float32, 1, 1, (4, 16), work, SMOKE_SPECS, max_batch=2, workers=args.workers)
    if not torch.cuda.is_available():
        sys.exit("gpu_train.py needs a CUDA GPU (or --smoke for the CPU check)")
    return Options("cuda", torch.bfloat16, args.warmup, args.steps, (256, 1280), work, SPECS, workers=args.workers)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, float32: checks the script")
    parser.add_argument("--only", default="", help="run only configurations whose name contains this")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=400, help="skip the configurations left after this")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workers", type=int, default=None,
                        help="dataloader worker processes (default: medvl.train's, trainer.dataloader_num_workers=null)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medvl-gpu-train-") as tmp:
        opts = options(args, Path(tmp))
        peak = (matmul_rate("cpu", torch.float32, 256, 5) if args.smoke
                else matmul_rate("cuda", torch.bfloat16, 8192, 50))
        device = "CPU (smoke: tiny models, not a measurement)" if args.smoke else torch.cuda.get_device_name()
        print(f"{device}; torch {torch.__version__}; matmul peak {peak / 1e12:.1f} TFLOP/s "
              f"({'float32 256^3' if args.smoke else 'bf16 8192^3'}); {opts.warmup} warm-up + {opts.steps} timed steps")
        print("MFU = needed FLOPs / time / matmul peak; FLOPs per row: 4*N_llm*L + 4*N_head*T + 6*N_lora*L + 6*layers*d_attn*L^2 "
              "+ 2*N_vision*P + 2*N_merger*I + 4*depth*d_vision*P*A (see the script's docstring)")
        print(f"{'configuration':<32} {'attn':<26} {'rows':>4} {'s/step':>7} {'tokens/s':>10} {'MFU':>7} "
              f"{'alloc':>7} {'reserved':>8}  (peak GiB)")
        results, counts, last_took = {}, {}, 0.0
        for run in [r for r in RUNS if args.only in r.name]:
            # Not started when the last configuration's duration would overrun the budget: a configuration
            # stopped from outside leaves no row.
            if time.perf_counter() - started + last_took > args.budget_s:
                results[run.name] = {"name": run.name, "skipped": f"time budget of {args.budget_s:.0f} s spent"}
            else:
                began = time.perf_counter()
                results[run.name] = _measure(run, counts, opts)
                last_took = time.perf_counter() - began
            print_row(results[run.name], peak)
            if args.json:  # after every configuration: what was measured survives a kill
                write_json(args.json, peak, results)
            gc.collect()
            if opts.device == "cuda":
                torch.cuda.empty_cache()
    title = "targets (smoke: tiny CPU models, the ratios mean nothing)" if args.smoke else "targets"
    print("\n".join([f"{title} (ratio = measured / target):", *("  " + line for line in targets(results, peak))]))
    print(f"total {time.perf_counter() - started:.0f} s")
    return results


def write_json(path: Path, peak: float, results: dict[str, dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"matmul_peak_flops": peak, "runs": list(results.values())}, indent=2))
    tmp.replace(path)


def _measure(run: Run, counts: dict[str, Counts], opts: Options) -> dict:
    try:
        if run.model not in counts:
            counts[run.model] = Counts.of(opts.specs[run.model])
        return run_one(run, counts[run.model], opts)
    except Skip as exc:
        return {"name": run.name, "skipped": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one configuration's failure (out of memory, a kernel) ends only it
        return {"name": run.name, "failed": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


if __name__ == "__main__":
    main()
