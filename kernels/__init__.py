"""Triton kernels, installed as `minichord.kernels` (see pyproject's package-dir mapping)."""
