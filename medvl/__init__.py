"""medvl: fine-tune and evaluate Qwen2-VL-family models on medical visual question answering."""

__version__ = "0.1.0"
