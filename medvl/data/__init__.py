"""Data: the unified row format, synthetic data, converters, datasets and collators."""
