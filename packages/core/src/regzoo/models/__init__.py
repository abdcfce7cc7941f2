"""The model contract: base class, batch keys, output type, optimiser interface, usual objective."""

from .base import Batch, RegistrationModel
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
]
