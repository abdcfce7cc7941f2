"""The authors' Keras VoxelMorph weights (``.h5``), read with h5py, without TensorFlow.

Balakrishnan et al., IEEE TMI 2019 (doi:10.1109/TMI.2019.2897538). The official TensorFlow
``VxmDense`` (``voxelmorph/tf/networks.py``) is saved by neurite's ``LoadableModel.save``: a Keras
HDF5 model file whose ``model_config`` attribute holds the constructor's arguments and whose
``model_weights`` group holds one group per layer (``save_weights`` writes the same groups at the
top, without the config). Every weighted layer is a convolution, named after its place in the
official U-Net, which has the layout of the official PyTorch one that regzoo follows (stride-1
convolutions and 2x max pooling, nearest upsampling, ``concatenate([upsampled, skip])``):

=======================================  ==============================================
Keras layer (``<name>`` = ``vxm_dense``)  regzoo parameter
=======================================  ==============================================
``<name>_unet_enc_conv_<l>_<c>``         ``unet_model.encoder.<l>.<c>.main``
``<name>_unet_dec_conv_<L-1-i>_<c>``     ``unet_model.decoder.<i>.<c>.main`` (L levels)
``<name>_unet_dec_final_conv_<n>``       ``unet_model.remaining.<n>.main``
``<name>_flow``                          ``flow``
=======================================  ==============================================

A Keras kernel is ``(*k, in, out)`` and a PyTorch one ``(out, in, *k)``; with channels-last images
whose spatial axes are in the same order as PyTorch's, the kernel's spatial axes map one to one,
and the input channels are ``(moving, fixed)`` in both (``concatenate([source, target])``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["is_hdf5", "read_keras", "official_config", "keras_state_dict", "load_keras"]

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FIRST = "_unet_enc_conv_0_0"


def is_hdf5(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file (by its 8-byte signature)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == _SIGNATURE
    except OSError:
        return False


def read_keras(path: str | Path) -> dict[str, Any]:
    """A Keras HDF5 model or weights file, read with h5py.

    Returns:
        ``{"keras_layers": {layer: {"kernel": array, "bias": array}}, "keras_config": dict or
        None}``: the layers that have weights (weight names without their ``:0``), and the
        ``model_config`` attribute's ``config`` (model files only).
    Raises:
        ValueError: the file is not readable as a Keras HDF5 file.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise ValueError("an HDF5 file without Keras layers (no layer_names)")
            layers: dict[str, dict[str, np.ndarray]] = {}
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                weights = {}
                for w in group.attrs.get("weight_names", []):
                    w = w.decode() if isinstance(w, bytes) else str(w)
                    weights[w.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[w])
                if weights:
                    layers[name] = weights
    except OSError as err:
        raise ValueError(f"not a readable Keras HDF5 file ({err})") from None
    if config is not None:
        config = json.loads(config.decode() if isinstance(config, bytes) else config)
        config = config.get("config", config)
    return {"keras_layers": layers, "keras_config": config}


def official_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A Keras ``VxmDense`` config in the terms of the PyTorch one (:func:`.official.architecture`).

    The TensorFlow code names the integration resolution ``int_resolution`` (``int_downsize`` is
    its deprecated alias) and a half-resolution U-Net ``svf_resolution=2`` (``unet_half_res`` its
    deprecated alias).

    Raises:
        ValueError: options without a regzoo equivalent (HyperMorph's ``hyp_model``, an
            ``svf_resolution`` other than 1 or 2, an SVF resolution other than its integration
            resolution).
    """
    if config.get("hyp_model") is not None:
        raise ValueError("the file is a HyperMorph network (hyp_model), which regzoo lacks")
    svf_res = int(config.get("svf_resolution", 1))
    half = bool(config.get("unet_half_res")) or svf_res == 2
    if svf_res not in (1, 2):
        raise ValueError(f"the file's network has svf_resolution={svf_res}; regzoo has 1 or 2")
    downsize = config.get("int_downsize") or config.get("int_resolution", 2)
    steps = int(config.get("int_steps", 7))
    if half and (steps == 0 or int(downsize) != 2):
        raise ValueError(
            "the file's network predicts its field at half resolution with "
            f"int_steps={steps}, int_resolution={downsize}; regzoo's half_res needs an SVF "
            "integrated at half resolution"
        )
    return {
        **{k: v for k, v in config.items() if k not in ("svf_resolution", "int_resolution")},
        "int_downsize": int(downsize),
        "unet_half_res": half,
    }


def _targets(model: torch.nn.Module, prefix: str) -> dict[str, str]:
    """regzoo module path -> Keras layer name, for every convolution of ``model``."""
    unet = model.unet_model
    names = {}
    for i, level in enumerate(unet.encoder):
        for c in range(len(level)):
            names[f"unet_model.encoder.{i}.{c}.main"] = f"{prefix}_unet_enc_conv_{i}_{c}"
    levels = len(unet.decoder)
    for i, level in enumerate(unet.decoder):
        for c in range(len(level)):
            names[f"unet_model.decoder.{i}.{c}.main"] = (
                f"{prefix}_unet_dec_conv_{levels - 1 - i}_{c}"
            )
    for n in range(len(unet.remaining)):
        names[f"unet_model.remaining.{n}.main"] = f"{prefix}_unet_dec_final_conv_{n}"
    names["flow"] = f"{prefix}_flow"
    if getattr(model, "probabilistic", False):
        names["flow_logsigma"] = f"{prefix}_log_sigma"
    return names


def keras_state_dict(
    model: torch.nn.Module, layers: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of ``model`` from a Keras ``VxmDense``'s layers (:func:`read_keras`).

    Raises:
        ValueError: one line naming the first layer that is missing, has another shape, or has no
            counterpart in the model.
    """
    starts = sorted(name[: -len(_FIRST)] for name in layers if name.endswith(_FIRST))
    if len(starts) != 1:
        raise ValueError(
            f"expected one Keras VxmDense U-Net (a layer *{_FIRST}), found {len(starts)}"
        )
    own = model.state_dict()
    state = {}
    targets = _targets(model, starts[0])
    for module, layer in targets.items():
        if layer not in layers:
            raise ValueError(f"the file has no layer {layer} (the model's {module})")
        weights = layers[layer]
        if set(weights) != {"kernel", "bias"}:
            raise ValueError(f"layer {layer} holds {sorted(weights)}, not a kernel and a bias")
        kernel = weights["kernel"]
        converted = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
        want = tuple(own[f"{module}.weight"].shape)
        if tuple(converted.shape) != want:
            keras_want = (*want[2:], want[1], want[0])
            raise ValueError(
                f"layer {layer}: kernel {tuple(kernel.shape)}, the model's {module} takes "
                f"{keras_want} (Keras order: *kernel, in, out)"
            )
        state[f"{module}.weight"] = converted
        state[f"{module}.bias"] = torch.from_numpy(np.asarray(weights["bias"]).copy())
    extra = sorted(set(layers) - set(targets.values()))
    if extra:
        raise ValueError(f"the file's layer {extra[0]} has no counterpart in the model")
    return state


def load_keras(model: torch.nn.Module, content: Mapping[str, Any]) -> None:
    """Load :func:`read_keras`'s content into a regzoo VoxelMorph, strictly.

    A model file's config is checked first (:func:`.official.check_config`: dense or SVF, widths,
    ``half_res``, ``bidir``); a weights-only file is checked by its layer names and shapes.
    """
    from .official import check_config

    config = content.get("keras_config")
    if config is not None:
        if bool(config.get("use_probs")) != bool(getattr(model, "probabilistic", False)):
            raise ValueError(
                f"the file's network has use_probs={bool(config.get('use_probs'))}, the model "
                f"probabilistic={bool(getattr(model, 'probabilistic', False))}"
            )
        check_config(model, {**official_config(config), "use_probs": False})
    model.load_state_dict(keras_state_dict(model, content["keras_layers"]), strict=True)
