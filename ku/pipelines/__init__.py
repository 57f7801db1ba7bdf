"""End-to-end recipes, one per paper: data -> features -> heads -> training -> evaluation.

Scripts in ``scripts/`` are thin absl-flag wrappers around these functions.
"""
