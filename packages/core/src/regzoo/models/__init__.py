"""Model base class, the shared output type and the usual registration objective."""

from .base import Batch, RegistrationModel
from .objective import RegistrationLoss
from .output import BATCH_IMAGE_KEYS, BATCH_LABEL_KEYS, RegistrationOutput

__all__ = [
    "Batch",
    "RegistrationModel",
    "RegistrationLoss",
    "RegistrationOutput",
    "BATCH_IMAGE_KEYS",
    "BATCH_LABEL_KEYS",
]
