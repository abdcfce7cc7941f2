"""regzoo: a model zoo for deep-learning image registration.

The top-level API, in timm's spirit::

    import regzoo
    regzoo.list_models("voxelmorph*")
    model = regzoo.create_model("voxelmorph", ndim=3)
    loss = regzoo.build("loss", {"name": "lncc", "window": 9})

Importing ``regzoo`` is cheap: submodules (``regzoo.spatial``, ``regzoo.losses``, ...) and the
plugins are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError, DataError, NonFiniteLossError, UnknownNameError, UserError
from .registry import (
    KINDS,
    Paper,
    build,
    create_model,
    get_entry,
    get_registry,
    list_entries,
    list_models,
    plugins,
    register,
    register_backbone,
    register_dataset,
    register_loss,
    register_metric,
    register_model,
    register_transformer,
)

__version__ = "0.1.0"

_SUBMODULES = (
    "spatial",
    "losses",
    "metrics",
    "nn",
    "data",
    "models",
    "engine",
    "testing",
    "config",
)

__all__ = [
    "__version__",
    "KINDS",
    "Paper",
    "build",
    "create_model",
    "get_entry",
    "list_entries",
    "list_models",
    "plugins",
    "register",
    "register_backbone",
    "register_dataset",
    "register_loss",
    "register_metric",
    "register_model",
    "register_transformer",
    "get_registry",
    "UserError",
    "UnknownNameError",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'regzoo' has no attribute {name!r}")
