"""The training and evaluation engine shared by every model."""

from ..models.optim import Optimizers
from .checkpoint import (
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    save_checkpoint,
    versions,
)
from .evaluate import evaluate, summarize_cases
from .optim import make_optimizer
from .runtime import Runtime, autocast, seed_everything, setup_runtime
from .trainer import Trainer, TrainResult, build_dataset, build_model, train

__all__ = [
    "Optimizers",
    "make_optimizer",
    "Trainer",
    "TrainResult",
    "train",
    "build_model",
    "build_dataset",
    "evaluate",
    "summarize_cases",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "model_from_checkpoint",
    "versions",
    "Runtime",
    "setup_runtime",
    "seed_everything",
    "autocast",
]
