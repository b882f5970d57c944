"""Models: loading Qwen2-VL-family checkpoints, the tiny offline models, LoRA targets."""
