"""Training speed and memory, logged through ``Trainer.log`` so every configured logger sees them.

HF's own log already carries ``loss``, ``learning_rate`` and ``grad_norm``; :class:`TrainingMonitor`
adds, at the same logging steps, what a run at scale is judged by: time per optimizer step, samples
and (non-padding) tokens per second, and the GPU memory peak.
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from medvl.training.packing import PackingCollator


class TrainingMonitor(TrainerCallback):
    """Logs, every time HF logs the loss, the averages since the previous log.

    Keys (``train/`` in TensorBoard and W&B): ``step_time`` (seconds per optimizer step),
    ``samples_per_second``, ``tokens_per_second`` (non-padding tokens, i.e. ``attention_mask`` sums,
    over all ranks) and, on a GPU, ``gpu_mem_peak_gb`` (this rank's ``max_memory_allocated``).

    A step's time runs from the end of the previous step's callbacks, checkpointing and logging to
    its optimizer step: it covers data loading, forward, backward and the update, and leaves out
    generation-based validation and checkpoint saving, so the rates measure training alone.
    Samples per step are the global batch (``per_device x accumulation x world size``); the last
    step of an epoch may hold fewer, as in HF's own ``train_samples_per_second``.

    ``trainer`` must be set to the Trainer (``train()`` does it for every callback).
    """

    def __init__(self) -> None:
        self.trainer = None
        self._resume = 0.0  # when the current step's training work began
        self._elapsed = 0.0
        self._steps = 0
        self._tokens = 0  # state.num_input_tokens_seen at the previous log

    def _continue(self) -> None:
        self._resume = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        # HF's own counter sums each micro-batch's attention_mask and gathers it over ranks; it is
        # off by default, and reading it is simpler and safer than re-counting in a collator that may
        # run in dataloader worker processes.
        args.include_num_input_tokens_seen = "non_padding"
        if self.trainer is not None and isinstance(getattr(self.trainer, "data_collator", None), PackingCollator):
            args.include_num_input_tokens_seen = "all"  # no padding, and no attention_mask to sum
        self._tokens = state.num_input_tokens_seen
        self._elapsed, self._steps = 0.0, 0
        if args.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(args.device)
        self._continue()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._continue()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._elapsed += time.perf_counter() - self._resume
        self._steps += 1

    def on_step_end(self, args, state, control, **kwargs):
        # control.should_log was set for this step by HF's flow callback, which runs first; Trainer.log
        # clears it, and HF's own log (loss, learning rate, grad norm) comes after this event.
        if control.should_log and self._steps and self.trainer is not None:
            self.trainer.log(self.measure(args, state))
            control.should_log = True
        self._continue()

    # Validation (inside another callback's on_step_end), HF's log and checkpoint saving all end
    # in one of these events: the next step's time starts after the last of them.
    def on_log(self, args, state, control, **kwargs):
        self._continue()

    def on_save(self, args, state, control, **kwargs):
        self._continue()

    def measure(self, args, state) -> dict[str, float]:
        """The averages since the previous call, which starts a new interval."""
        elapsed = max(self._elapsed, 1e-9)
        samples = self._steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        tokens = state.num_input_tokens_seen - self._tokens
        logs = {"step_time": elapsed / self._steps, "samples_per_second": samples / elapsed,
                "tokens_per_second": tokens / elapsed}
        if args.device.type == "cuda":
            logs["gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated(args.device) / 2**30
            torch.cuda.reset_peak_memory_stats(args.device)
        self._tokens = state.num_input_tokens_seen
        self._elapsed, self._steps = 0.0, 0
        return logs
