"""Training: the HF Trainer + PEFT loop behind `python -m medvl.train`."""
