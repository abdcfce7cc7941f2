"""The model contract: base class, batch keys, output type, optimiser interface, usual objective,
and the EMA update of teacher-student methods."""

from .base import Batch, RegistrationModel
from .ema import ema_update
from .objective import RegistrationLoss
from .optim import Optimizers
from .output import (
    BATCH_IMAGE_KEYS,
    BATCH_KEYS,
    BATCH_LABEL_KEYS,
    RegistrationOutput,
    contract_problem,
)

__all__ = [
    "Batch",
    "RegistrationModel",
    "RegistrationLoss",
    "RegistrationOutput",
    "Optimizers",
    "BATCH_KEYS",
    "BATCH_IMAGE_KEYS",
    "BATCH_LABEL_KEYS",
    "contract_problem",
    "ema_update",
]
