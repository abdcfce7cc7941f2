"""The official PyTorch VoxelMorph files: read, checked against a model, or built into one.

The authors' ``VxmDense.save`` (voxelmorph 0.2, ``voxelmorph/torch/modelio.py``) writes
``{'config': <the constructor's arguments>, 'model_state': <state_dict without grid buffers>}``;
``torch.save(model.state_dict())`` files hold the sampling grids (``transformer.grid``,
``integrate.transformer.grid``) besides the weights. regzoo's :class:`~.model.VoxelMorph` keeps the
official parameter names, so both load as they are, strictly.

A dense and an SVF network have the same parameters; only a file's ``config`` tells them apart
(``int_steps > 0``: an SVF integrated with ``int_steps`` squarings at ``1 / int_downsize`` of the
image size). That ``config`` is therefore checked against the model (:func:`check_config`), or
builds it (:func:`from_official`). ``bidir`` (the inverse field and a second image term) changes
neither the weights nor the forward field, but it changes the outputs and the training objective,
so it is checked too (``model.bidir``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regzoo.engine.checkpoint import load_checkpoint

__all__ = ["architecture", "check_config", "load_official", "from_official", "read"]

#: The official ``default_unet_features()``: VoxelMorph-2.
DEFAULT_FEATURES = ([16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16])


def read(source: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """The content of a weights file (``torch.load(..., weights_only=True)``), or ``source``."""
    return load_checkpoint(source) if isinstance(source, (str, Path)) else source


def _features(config: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Encoder and decoder widths as the official ``Unet`` derives them from its arguments."""
    features = config.get("nb_unet_features")
    per_level = int(config.get("nb_unet_conv_per_level", 1))
    if features is None:
        return list(DEFAULT_FEATURES[0]), list(DEFAULT_FEATURES[1])
    if isinstance(features, int):
        levels = config.get("nb_unet_levels")
        if levels is None:
            raise ValueError(
                "the file's config gives nb_unet_features as an integer without levels"
            )
        mult = float(config.get("unet_feat_mult", 1))
        feats = np.round(features * mult ** np.arange(int(levels))).astype(int)
        enc = np.repeat(feats[:-1], per_level)
        dec = np.repeat(np.flip(feats), per_level)
        return [int(f) for f in enc], [int(f) for f in dec]
    enc, dec = features
    return [int(f) for f in enc], [int(f) for f in dec]


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """regzoo ``voxelmorph`` model options equivalent to an official ``VxmDense`` config.

    Returns ``ndim``, ``in_channels``, ``enc_features``, ``dec_features``, ``nb_conv_per_level``,
    ``half_res``, ``transformer`` (``"dense"`` or an ``svf`` config with ``steps`` and
    ``downsize``) and ``bidir``.

    Raises:
        ValueError: an official option regzoo's VoxelMorph has no equivalent for (``use_probs``,
            different source and target channels).
    """
    shape = config.get("inshape")
    if shape is None:
        raise ValueError("the file's config has no inshape: not an official VxmDense config")
    if config.get("use_probs"):
        raise ValueError("the file's config sets use_probs, which the official PyTorch code lacks")
    src, trg = int(config.get("src_feats", 1)), int(config.get("trg_feats", 1))
    if src != trg:
        raise ValueError(f"the file's network takes {src} source and {trg} target channels")
    enc, dec = _features(config)
    steps = int(config.get("int_steps", 7))
    downsize = int(config.get("int_downsize", 2))
    transformer: str | dict[str, Any] = (
        {"name": "svf", "steps": steps, "downsize": downsize} if steps > 0 else "dense"
    )
    return {
        "ndim": len(shape),
        "in_channels": src,
        "enc_features": enc,
        "dec_features": dec,
        "nb_conv_per_level": int(config.get("nb_unet_conv_per_level", 1)),
        "half_res": bool(config.get("unet_half_res", False)),
        "transformer": transformer,
        "bidir": bool(config.get("bidir", False)),
    }


def _describe(transformer: str | Mapping[str, Any]) -> str:
    if transformer == "dense":
        return "dense (int_steps=0)"
    return f"SVF (int_steps={transformer['steps']}, int_downsize={transformer['downsize']})"


def _model_architecture(model: torch.nn.Module) -> dict[str, Any]:
    unet = model.unet_model
    widths = [[conv.main.out_channels for conv in level] for level in unet.encoder]
    dec = [[conv.main.out_channels for conv in level] for level in unet.decoder]
    svf = getattr(model.transformer, "steps", None)
    transformer = (
        "dense"
        if svf is None
        else {"name": "svf", "steps": svf, "downsize": model.transformer.downsize}
    )
    first = unet.encoder[0][0].main
    return {
        "ndim": model.ndim,
        "in_channels": first.in_channels // 2,
        "enc_features": [w for level in widths for w in level],
        "dec_features": [w for level in dec for w in level]
        + [conv.main.out_channels for conv in unet.remaining],
        "nb_conv_per_level": len(unet.encoder[0]),
        "half_res": bool(unet.half_res),
        "transformer": transformer,
    }


def check_config(model: torch.nn.Module, config: Mapping[str, Any]) -> None:
    """Check an official ``VxmDense`` config against a regzoo VoxelMorph model.

    Raises:
        ValueError: one line naming the first option that differs and the override that fixes it.
    """
    want = architecture(config)
    have = _model_architecture(model)
    if want["transformer"] != have["transformer"]:
        fix = (
            "model.transformer=dense"
            if want["transformer"] == "dense"
            else "model.transformer={{name: svf, steps: {steps}, downsize: {downsize}}}".format(
                **want["transformer"]
            )
        )
        raise ValueError(
            f"the file is an official {_describe(want['transformer'])} VoxelMorph, the model is "
            f"{_describe(have['transformer'])}: use {fix}"
        )
    for key in ("ndim", "in_channels", "enc_features", "dec_features", "nb_conv_per_level"):
        if want[key] != have[key]:
            raise ValueError(f"the file's network has {key}={want[key]}, the model {have[key]}")
    if want["half_res"] != have["half_res"]:
        raise ValueError(
            f"the file's network has unet_half_res={want['half_res']}, the model "
            f"half_res={have['half_res']}"
        )
    if bool(model.bidir) != want["bidir"]:
        raise ValueError(
            f"the file's network has bidir={want['bidir']}, the model {bool(model.bidir)}: use "
            f"model.bidir={str(want['bidir']).lower()}"
        )


def _weights(content: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    if "model_state" in content:
        return content["model_state"]
    if "state_dict" in content and isinstance(content["state_dict"], Mapping):
        return content["state_dict"]
    return content


def load_official(model: torch.nn.Module, source: str | Path | Mapping[str, Any]) -> None:
    """Load official or regzoo VoxelMorph weights into ``model``, strictly.

    Args:
        model: a regzoo VoxelMorph (``voxelmorph``, ``voxelmorph-1``, ``voxelmorph-diff``).
        source: a file or its content: ``{'config', 'model_state'}`` (``VxmDense.save``; the config
            is checked first), ``{'state_dict': ...}`` or a bare state dict. The official
            sampling-grid buffers are dropped.
    Raises:
        ValueError: the config does not describe the model (one line saying what differs).
        RuntimeError: names or shapes do not match (``load_state_dict``'s message).
    """
    content = read(source)
    if "model_state" in content and "config" in content:
        check_config(model, content["config"])
    state = _weights(content)
    own = model.state_dict()
    model.load_state_dict(
        {k: v for k, v in state.items() if k in own or not k.endswith("transformer.grid")},
        strict=True,
    )


def from_official(source: str | Path | Mapping[str, Any], **overrides: Any) -> torch.nn.Module:
    """A regzoo ``voxelmorph`` built from an official ``VxmDense.save`` file, weights loaded.

    Args:
        source: the file (or its content), which must hold ``config`` and ``model_state``.
        **overrides: further options of the model (the training objective, ``num_labels``...).
    """
    import regzoo

    content = read(source)
    if "config" not in content or "model_state" not in content:
        raise ValueError("not an official VxmDense.save file (no config/model_state)")
    options = architecture(content["config"])
    model = regzoo.create_model("voxelmorph", **{**options, **overrides})
    load_official(model, content)
    return model
