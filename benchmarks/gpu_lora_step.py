"""GPU memory and speed of a LoRA training step on a Qwen2-VL-2B-sized model (needs a CUDA GPU).

    python benchmarks/gpu_lora_step.py                          # batch 4 x 1024 tokens
    python benchmarks/gpu_lora_step.py --batch 8 --gradient-checkpointing

The model is built from Qwen2-VL-2B-Instruct's published sizes with random weights (no download), in
bfloat16 with SDPA attention; medvl's own LoRA setup for ``model=2b stage=instruct lora=<targets>`` is
applied (medvl.models.lora), and full steps (forward, backward, clipping, fused AdamW) are timed after
three warm-up steps. Every row is one 448x448 image (256 image tokens) followed by random text.
Prints ms/step, tokens/s and the peak GPU memory allocated and reserved.
"""

from __future__ import annotations

import argparse
import sys
import time

# Qwen2-VL-2B-Instruct's config.json (text and vision towers, special token ids).
TEXT = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
            num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
            vocab_size=151936, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
            bos_token_id=151643, eos_token_id=151645)
VISION = dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2)
VISION_START, IMAGE_PAD, VISION_END = 151652, 151655, 151653
GRID = (1, 32, 32)  # a 448x448 image: 1024 patches, 256 tokens after the 2x2 merge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024, help="tokens per row, image tokens included")
    parser.add_argument("--lora", default="attn_ffn", help="a conf/lora choice")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_lora_step.py needs a CUDA GPU")
    from hydra import compose, initialize_config_dir
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from medvl.config import CONF_DIR
    from medvl.models.lora import apply_training_setup, target_modules

    config = Qwen2VLConfig(text_config=TEXT, vision_config=VISION, image_token_id=IMAGE_PAD,
                           video_token_id=151656, vision_start_token_id=VISION_START,
                           vision_end_token_id=VISION_END, tie_word_embeddings=True)
    with torch.device("cuda"):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model=2b", "stage=instruct", f"lora={args.lora}", "cache_dir=unused",
                                          "output_dir=unused"])
    n_targets = len(target_modules(model, cfg))
    model = apply_training_setup(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, bf16, sdpa; lora={args.lora} "
          f"r={cfg.lora.r}: {n_targets} modules, {sum(p.numel() for p in trainable) / 1e6:.2f}M trainable")
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()

    n_image = GRID[0] * GRID[1] * GRID[2] // 4
    if args.length < n_image + 16:
        sys.exit(f"--length must be at least {n_image + 16} (the image alone is {n_image} tokens)")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151000, (args.batch, args.length), generator=gen)
    ids[:, 5], ids[:, 6 : 6 + n_image], ids[:, 6 + n_image] = VISION_START, IMAGE_PAD, VISION_END
    labels = ids.clone()
    labels[:, : 7 + n_image] = -100  # the answer-only loss of medvl's collator: no loss on the prompt
    n_patches = GRID[0] * GRID[1] * GRID[2]
    batch = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == IMAGE_PAD).long(),
        "pixel_values": torch.randn(args.batch * n_patches, 3 * 2 * 14 * 14, generator=gen).to(torch.bfloat16),
        "image_grid_thw": torch.tensor([GRID] * args.batch),
    }
    batch = {k: v.cuda() for k, v in batch.items()}
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, fused=True)

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"{torch.cuda.get_device_name()}: batch {args.batch} x {args.length} tokens, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}: {seconds / args.steps * 1000:.0f} ms/step, "
          f"{args.batch * args.length * args.steps / seconds:,.0f} tokens/s, peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
          f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved (loss {loss.item():.3f})")


if __name__ == "__main__":
    main()
