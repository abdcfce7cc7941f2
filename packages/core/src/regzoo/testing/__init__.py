"""The conformance suite every registered model passes (docs/conventions.md).

For a model name and a dimensionality it claims (``2d``/``3d`` tags), :func:`check_model`:

1. checks the entry's metadata and builds the model from its default config;
2. runs a forward pass on a tiny batch and checks the :class:`~regzoo.models.RegistrationOutput`
   (types, shapes, finite values) and the label-free objective;
3. round-trips a checkpoint: the weights perturbed, ``state_dict`` saved to bytes with
   ``torch.save`` and read back with ``torch.load(weights_only=True)`` into a model built from
   another seed gives equal weights and outputs (and the perturbed outputs differ from that
   model's before loading, so a load that does nothing fails);
4. runs one training step and checks that the loss is finite and the weights moved;
5. checks that zero network output is the identity: with every parameter set to zero the
   displacement is zero and the warped image equals the moving one (1e-5).

Use it from any plugin's tests::

    from regzoo.testing import check_model, parametrize_models

    @parametrize_models("example-*")
    def test_conformance(name, ndim):
        check_model(name, ndim)

A model may add a ``test`` preset to its registry entry to set what the suite uses::

    presets={"test": {"size": {"2d": [64, 64], "3d": [32, 32, 32]},
                      "model": {"embed_dim": 12}}}

``size`` is the spatial size of the tiny inputs per dimensionality (default ``[32, 32]`` and
``[16, 16, 16]``); ``model`` holds config overrides that make the network small enough for a CPU
test (the default config is still built and checked in step 1).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..registry import Paper, create_model, get_entry, list_models

__all__ = [
    "CHECKS",
    "ConformanceError",
    "DEFAULT_SIZES",
    "IDENTITY_TOL",
    "NUM_CLASSES",
    "check_model",
    "check_metadata",
    "check_build",
    "check_forward",
    "check_training_step",
    "check_checkpoint",
    "check_zero_output",
    "model_cases",
    "parametrize_models",
    "one_thread",
    "input_size",
    "suite_config",
    "tiny_batch",
    "build_for_test",
]

DEFAULT_SIZES: dict[int, tuple[int, ...]] = {2: (32, 32), 3: (16, 16, 16)}
NUM_CLASSES = 4
BATCH_SIZE = 2
IDENTITY_TOL = 1e-5


class ConformanceError(AssertionError):
    """A registered model does not keep the contract; the message names the model and the check."""


def _fail(name: str, ndim: int, what: str) -> ConformanceError:
    return ConformanceError(f"{name} ({ndim}d): {what}")


def _test_preset(name: str) -> Mapping[str, Any]:
    return get_entry("model", name).presets.get("test", {})


def input_size(name: str, ndim: int) -> tuple[int, ...]:
    """Spatial size of the suite's inputs for ``name``: its ``test`` preset or the default."""
    sizes = _test_preset(name).get("size", {})
    size = tuple(int(s) for s in sizes.get(f"{ndim}d", DEFAULT_SIZES[ndim]))
    if len(size) != ndim:
        raise _fail(name, ndim, f"test preset size {list(size)} is not {ndim}-dimensional")
    return size


def suite_config(name: str, ndim: int) -> dict[str, Any]:
    """The config the suite builds ``name`` with: ``ndim`` plus the ``test`` preset's overrides."""
    overrides = dict(_test_preset(name).get("model", {}))
    if "ndim" in get_entry("model", name).default_config():
        overrides["ndim"] = ndim
    return overrides


def build_for_test(name: str, ndim: int, seed: int = 0) -> torch.nn.Module:
    """Build ``name`` with :func:`suite_config` under a fixed seed."""
    torch.manual_seed(seed)
    return create_model(name, **suite_config(name, ndim))


def tiny_batch(
    ndim: int,
    size: Sequence[int] | None = None,
    batch_size: int = BATCH_SIZE,
    channels: int = 1,
    num_classes: int = NUM_CLASSES,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A batch in the model input format: smooth random images in [0, 1] and label maps.

    ``moving``/``fixed`` ``(B, channels, *S)`` float32, ``moving_label``/``fixed_label``
    ``(B, 1, *S)`` int64 with ``num_classes`` classes (intensity quantiles of the image),
    ``moving_landmarks``/``fixed_landmarks`` ``(B, 4, ndim)`` voxel coordinates,
    ``moving_labelled``/``fixed_labelled`` ``(B,)`` bool and ``spacing`` ``(B, ndim)`` mm.
    """
    size = tuple(size or DEFAULT_SIZES[ndim])
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    for key in ("moving", "fixed"):
        coarse = torch.rand(batch_size, channels, *[max(2, s // 4) for s in size], generator=gen)
        mode = "bilinear" if ndim == 2 else "trilinear"
        image = torch.nn.functional.interpolate(coarse, size=size, mode=mode, align_corners=True)
        lo = image.flatten(1).min(1).values.view(-1, *[1] * (ndim + 1))
        hi = image.flatten(1).max(1).values.view(-1, *[1] * (ndim + 1))
        image = (image - lo) / (hi - lo).clamp_min(1e-6)
        grey = image[:, :1]
        edges = torch.linspace(0, 1, num_classes + 1)[1:-1]
        batch[key] = image.contiguous()
        batch[f"{key}_label"] = torch.bucketize(grey.contiguous(), edges).long()
        extent = torch.tensor(size, dtype=torch.float32) - 1
        batch[f"{key}_landmarks"] = torch.rand(batch_size, 4, ndim, generator=gen) * extent
    for key in ("moving", "fixed"):
        batch[f"{key}_labelled"] = torch.ones(batch_size, dtype=torch.bool)
    batch["spacing"] = torch.ones(batch_size, ndim)
    return batch


def _outputs(model: torch.nn.Module, batch: Mapping[str, Any], seed: int = 0) -> Any:
    torch.manual_seed(seed)  # stochastic models (sampling, MC dropout) draw the same noise
    with torch.no_grad():
        return model(batch)


def _batch_for(name: str, ndim: int) -> dict[str, Any]:
    channels = int(suite_config(name, ndim).get("in_channels", 0)) or int(
        get_entry("model", name).default_config().get("in_channels", 1)
    )
    return tiny_batch(ndim, input_size(name, ndim), channels=channels)


def check_metadata(
    name: str, ndim: int | None = None, model: torch.nn.Module | None = None
) -> None:
    """The entry has a one-line summary, claims 2d and/or 3d, and its paper is a :class:`Paper`."""
    entry = get_entry("model", name)
    if not entry.summary.strip() or "\n" in entry.summary.strip():
        raise _fail(name, ndim or 0, "the summary must be one non-empty line")
    if not entry.dims:
        raise _fail(name, ndim or 0, f"tags {entry.tags} claim neither '2d' nor '3d'")
    if entry.paper is not None and not isinstance(entry.paper, Paper):
        raise _fail(name, ndim or 0, f"paper must be a regzoo.Paper, got {type(entry.paper)}")
    if ndim is not None and ndim not in entry.dims:
        raise _fail(name, ndim, f"the entry claims only {entry.dims}")


def check_build(name: str, ndim: int, model: torch.nn.Module | None = None) -> None:
    """The default config (with ``ndim``) and the test config build a :class:`RegistrationModel`."""
    from ..models import RegistrationModel

    entry = get_entry("model", name)
    kwargs = {"ndim": ndim} if "ndim" in entry.default_config() else {}
    built = (("default config", create_model(name, **kwargs)), ("test config", model))
    for what, candidate in built:
        if candidate is not None and not isinstance(candidate, RegistrationModel):
            raise _fail(
                name, ndim, f"{what} built a {type(candidate).__name__}, not a RegistrationModel"
            )


def _check_output(name: str, ndim: int, out: Any, batch: Mapping[str, torch.Tensor]) -> None:
    from ..models import contract_problem

    problem = contract_problem(out, batch)
    if problem is not None:
        raise _fail(name, ndim, problem)


def check_forward(name: str, ndim: int, model: torch.nn.Module | None = None) -> None:
    """Forward on a tiny batch in train and eval mode; output types, shapes, finite objective."""
    model = model if model is not None else build_for_test(name, ndim)
    batch = _batch_for(name, ndim)
    for train in (True, False):
        model.train(train)
        out = _outputs(model, batch)
        _check_output(name, ndim, out, batch)
    with torch.no_grad():
        objective = model.objective(batch, out)
    if objective.dim() != 0 or not torch.isfinite(objective):
        raise _fail(name, ndim, f"objective must be a finite scalar, got {objective}")


def check_training_step(name: str, ndim: int, model: torch.nn.Module | None = None) -> None:
    """One :meth:`training_step` with Adam: finite loss terms, finite gradients, weights move."""
    from ..engine.optim import make_optimizer
    from ..models import Optimizers

    model = (model if model is not None else build_for_test(name, ndim)).train()
    if not model.trainable:
        return
    batch = _batch_for(name, ndim)
    groups = {k: [p for p in v if p.requires_grad] for k, v in model.parameter_groups().items()}
    optim = Optimizers({k: make_optimizer(p, lr=1e-3) for k, p in groups.items() if p})
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    if not isinstance(model.stage(0), str):
        raise _fail(name, ndim, "stage(step) must return a string")
    terms = model.training_step(batch, optim, 0)
    if "loss" not in terms:
        raise _fail(name, ndim, f"training_step returned {sorted(terms)}, without 'loss'")
    for key, value in terms.items():
        if not torch.isfinite(torch.as_tensor(value)).all():
            raise _fail(name, ndim, f"loss term {key!r} is not finite: {value}")
    for key, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise _fail(name, ndim, f"gradient of {key} is not finite")
    if before and all(torch.equal(before[k], p) for k, p in model.named_parameters()):
        raise _fail(name, ndim, "one training step changed no parameter")


_PERTURBATION = 0.05


def _perturbed_copy(model: torch.nn.Module, seed: int = 123) -> torch.nn.Module:
    """A copy of ``model`` with seeded noise (std 0.05) added to every float
    parameter, so its weights differ from any freshly built model (zero-initialised heads too)."""
    import copy

    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clone.parameters():
            if p.is_floating_point():
                noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * _PERTURBATION
                p.add_(noise.to(p.device))
    return clone


def _same_outputs(first: Any, second: Any) -> str | None:
    """The key of the first output tensor that differs between two outputs, or ``None``."""
    for key, tensor in first.tensors().items():
        again = second.tensors().get(key)
        if (
            again is None
            or again.shape != tensor.shape
            or not torch.allclose(tensor, again, rtol=1e-5, atol=1e-6)
        ):
            return key
    return None


def check_checkpoint(name: str, ndim: int, model: torch.nn.Module | None = None) -> None:
    """``state_dict`` through bytes (``weights_only=True``) into a new model gives the same weights
    and outputs.

    The weights are perturbed first (on a copy; ``model`` is left as it is) and the new model is
    built from another seed, so the check fails when loading does nothing, even for a network
    whose heads start at zero.
    """
    model = _perturbed_copy(model if model is not None else build_for_test(name, ndim)).eval()
    batch = _batch_for(name, ndim)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    try:
        state = torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _fail(name, ndim, f"state_dict does not load with weights_only=True: {err}") from err
    other = build_for_test(name, ndim, seed=1).eval()
    first = _outputs(model, batch)
    has_weights = any(p.is_floating_point() for p in model.parameters())
    if has_weights and _same_outputs(first, _outputs(other, batch)) is None:
        raise _fail(name, ndim, "perturbed weights give the output of a fresh model")
    other.load_state_dict(state, strict=True)
    loaded = other.state_dict()
    for key, tensor in model.state_dict().items():
        if key not in loaded or not torch.equal(loaded[key], tensor):
            raise _fail(name, ndim, f"state_dict entry {key!r} differs after a round trip")
    differing = _same_outputs(first, _outputs(other, batch))
    if differing is not None:
        raise _fail(name, ndim, f"output {differing!r} differs after a checkpoint round trip")


def check_zero_output(name: str, ndim: int, model: torch.nn.Module | None = None) -> None:
    """With every parameter zero (so every network outputs zero) the transform is the identity.

    This sets the parameters of ``model`` to zero. A model without parameters (a classical
    method: no network) is skipped.
    """
    from ..spatial import warp

    model = (model if model is not None else build_for_test(name, ndim)).eval()
    if not list(model.parameters()):
        return
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    batch = _batch_for(name, ndim)
    out = _outputs(model, batch)
    moving = batch["moving"]
    ddf_max = out.ddf.abs().max().item()
    if ddf_max > IDENTITY_TOL:
        raise _fail(name, ndim, f"zero network output gives a displacement up to {ddf_max:.3g}")
    for what, image in (("warp(moving, ddf)", warp(moving, out.ddf)), ("warped", out.warped)):
        err = (image - moving).abs().max().item()
        if err > IDENTITY_TOL:
            raise _fail(name, ndim, f"{what} differs from moving by {err:.3g} at zero output")


# In the order check_model runs them: each later check may change the model (BatchNorm
# statistics, a training step, zeroed weights), which no earlier one is affected by.
CHECKS: dict[str, Callable[..., None]] = {
    "metadata": check_metadata,
    "build": check_build,
    "forward": check_forward,
    "checkpoint": check_checkpoint,
    "training_step": check_training_step,
    "zero_output": check_zero_output,
}


def check_model(name: str, ndim: int, checks: Sequence[str] | None = None) -> None:
    """Run the conformance checks (all of :data:`CHECKS` by default) for ``name`` in ``ndim``-D.

    Raises:
        ConformanceError: naming the model, the dimensionality and what is wrong.
    """
    unknown = sorted(set(checks or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; checks: {', '.join(CHECKS)}")
    selected = [key for key in CHECKS if checks is None or key in checks]
    model = None
    for key in selected:
        try:
            if model is None and key != "metadata":
                model = build_for_test(name, ndim)  # one model through the checks: builds are slow
            CHECKS[key](name, ndim, model)
        except ConformanceError:
            raise
        except Exception as err:
            raise _fail(name, ndim, f"check {key!r} raised {type(err).__name__}: {err}") from err


def model_cases(pattern: str = "*", plugin: str | None = None) -> list[tuple[str, int]]:
    """``(name, ndim)`` for every registered model matching ``pattern`` and every dim it claims.

    Args:
        pattern: glob on the model name.
        plugin: keep only the entries of this distribution (``"regzoo-models-voxelmorph"``).
    """
    cases = []
    for name in list_models(pattern):
        entry = get_entry("model", name)
        if plugin is None or entry.plugin == plugin:
            cases.extend((name, d) for d in entry.dims)
    return cases


def parametrize_models(
    pattern: str = "*", plugin: str | None = None, slow_dims: Sequence[int] = ()
) -> Any:
    """A ``pytest.mark.parametrize("name, ndim", ...)`` over :func:`model_cases`.

    Args:
        pattern, plugin: as :func:`model_cases`.
        slow_dims: dimensionalities whose cases get ``pytest.mark.slow`` (e.g. ``(3,)``).

    Raises:
        ValueError: no model matches, so that the test module fails to collect instead of
            being skipped as an empty parametrization.
    """
    import pytest

    cases = [
        pytest.param(n, d, id=f"{n}-{d}d", marks=[pytest.mark.slow] if d in slow_dims else [])
        for n, d in model_cases(pattern, plugin)
    ]
    if not cases:
        raise ValueError(
            f"no registered model matches pattern {pattern!r}"
            + (f" in plugin {plugin!r}" if plugin else "")
            + " (is the plugin installed?)"
        )
    return pytest.mark.parametrize(("name", "ndim"), cases)


def one_thread() -> Any:
    """Run a test on one intra-op thread (restored after): a generator for ``pytest.fixture``.

    Tiny test shapes gain nothing from more threads and lose much on a busy machine. A plugin's
    ``conftest.py`` applies it to every test with
    ``one_thread = pytest.fixture(autouse=True)(regzoo.testing.one_thread)``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
