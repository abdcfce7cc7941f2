"""The training and evaluation engine."""
