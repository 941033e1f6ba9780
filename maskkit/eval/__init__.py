"""Evaluation: zero-shot classification (and, later, fine-tuning and mask-lesion overlap)."""
