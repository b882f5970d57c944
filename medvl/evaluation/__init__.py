"""Evaluation: metrics, answer extraction, aggregation, generation."""
