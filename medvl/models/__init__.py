"""Models: loading checkpoints of each family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE, Gemma 3 / MedGemma),
their tiny offline variants, and what a stage trains (LoRA targets by each family's component map)."""
