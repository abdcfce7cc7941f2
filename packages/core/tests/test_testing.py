"""The conformance suite itself: it passes a model that keeps the contract and catches each breach.

The suite over every installed model runs in ``tests/test_conformance.py`` at the repository root.
"""

from __future__ import annotations

import pytest
import torch

import regzoo
import regzoo.registry as reg
from regzoo import testing
from regzoo.models import RegistrationLoss, RegistrationModel, RegistrationOutput
from regzoo.nn import conv_nd
from regzoo.spatial import warp
from regzoo.testing import ConformanceError, check_model


class ToyDense(RegistrationModel):
    """One convolution from the pair to a dense field; ``breach`` breaks one rule on purpose."""

    def __init__(self, ndim: int = 2, in_channels: int = 1, breach: str = "") -> None:
        super().__init__()
        self.breach = breach
        self.conv = conv_nd(ndim)(2 * in_channels, ndim, 3, padding=1)
        # a value that changes the output but is not saved in the state_dict
        self.register_buffer("scale", torch.rand(()) + 0.5, persistent=breach != "unsaved")
        if breach == "frozen":
            self.conv.requires_grad_(False)
        if breach in ("zero-head", "noload"):  # a zero-initialised head, as affine heads are
            torch.nn.init.zeros_(self.conv.weight)
            torch.nn.init.zeros_(self.conv.bias)
        self.objective_terms = RegistrationLoss(similarity={"name": "mse"})

    def load_state_dict(self, state_dict, strict=True, assign=False):
        if self.breach == "noload":
            return torch.nn.modules.module._IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, batch):
        moving = batch["moving"]
        ddf = self.conv(torch.cat([moving, batch["fixed"]], 1)) * self.scale
        if self.breach == "offset":
            ddf = ddf + 0.25
        if self.breach == "shape":
            ddf = ddf[:, :1]
            return RegistrationOutput(warped=moving, ddf=ddf)
        if self.breach == "tuple":
            return warp(moving, ddf), ddf
        return RegistrationOutput(warped=warp(moving, ddf), ddf=ddf)

    def loss(self, batch, out):
        terms = self.objective_terms(batch, out)
        if self.breach == "nan":
            terms["loss"] = terms["loss"] * float("nan")
        return terms


@pytest.fixture
def toy_registry(monkeypatch):
    """A scratch model registry holding ``toy`` and one ``toy-<breach>`` per breach."""
    fresh = reg.Registry("model")
    monkeypatch.setitem(reg._REGISTRIES, "model", fresh)
    breaches = ("offset", "shape", "tuple", "nan", "frozen", "unsaved", "zero-head", "noload")
    for breach in ("", *breaches):
        name = f"toy-{breach}" if breach else "toy"

        def builder(ndim: int = 2, in_channels: int = 1, _breach=breach):
            return ToyDense(ndim, in_channels, _breach)

        fresh.register(name, summary="A toy.", tags=("2d", "3d"))(builder)
    return fresh


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_model_that_keeps_the_contract_passes(toy_registry, ndim):
    check_model("toy", ndim)


@pytest.mark.parametrize(
    ("breach", "check", "message"),
    [
        ("offset", "zero_output", "zero network output gives a displacement"),
        ("shape", "forward", "ddf has shape"),
        ("tuple", "forward", "not RegistrationOutput"),
        ("nan", "training_step", "NonFiniteLossError"),
        ("frozen", "training_step", "training_step"),
        ("unsaved", "checkpoint", "differs after a checkpoint round trip"),
        ("noload", "checkpoint", "state_dict entry '.*' differs after a round trip"),
    ],
)
def test_each_breach_is_caught(toy_registry, breach, check, message):
    with pytest.raises(ConformanceError, match=message) as info:
        check_model(f"toy-{breach}", 2, checks=[check])
    assert str(info.value).startswith(f"toy-{breach} (2d): ")


def test_a_zero_initialised_head_passes_the_checkpoint_check(toy_registry):
    # seed 0 and seed 1 build the same zero head: only the perturbation makes the check mean much
    check_model("toy-zero-head", 2, checks=["checkpoint"])


def test_an_empty_model_selection_is_an_error(toy_registry):
    with pytest.raises(ValueError, match="no registered model matches pattern 'nothing-\\*'"):
        testing.parametrize_models("nothing-*")
    with pytest.raises(ValueError, match="in plugin 'regzoo-models-none'"):
        testing.parametrize_models(plugin="regzoo-models-none")


def test_metadata_and_builder_type_are_checked(toy_registry):
    toy_registry.register("two-lines", summary="first\nsecond", tags=("2d",))(
        lambda ndim=2: ToyDense(ndim)
    )
    toy_registry.register("no-dims", summary="x", tags=("affine",))(lambda ndim=2: ToyDense(ndim))
    toy_registry.register("not-a-model", summary="x", tags=("2d",))(
        lambda ndim=2: torch.nn.Identity()
    )
    with pytest.raises(ConformanceError, match="one non-empty line"):
        check_model("two-lines", 2, checks=["metadata"])
    with pytest.raises(ConformanceError, match="claim neither"):
        check_model("no-dims", 2, checks=["metadata"])
    with pytest.raises(ConformanceError, match="not a RegistrationModel"):
        check_model("not-a-model", 2, checks=["build"])
    with pytest.raises(ConformanceError, match="claims only"):
        testing.check_metadata("not-a-model", 3)
    with pytest.raises(ValueError, match="unknown checks"):
        check_model("toy", 2, checks=["speed"])


def test_test_preset_sets_size_and_model_overrides(toy_registry):
    toy_registry.register(
        "sized",
        summary="x",
        tags=("2d", "3d"),
        presets={"test": {"size": {"2d": [24, 40]}, "model": {"in_channels": 2}}},
    )(lambda ndim=2, in_channels=1: ToyDense(ndim, in_channels))
    assert testing.input_size("sized", 2) == (24, 40)
    assert testing.input_size("sized", 3) == testing.DEFAULT_SIZES[3]
    assert testing.suite_config("sized", 3) == {"in_channels": 2, "ndim": 3}
    check_model("sized", 2)
    toy_registry.register(
        "badsize", summary="x", tags=("2d",), presets={"test": {"size": {"2d": [8]}}}
    )(lambda ndim=2: ToyDense(ndim))
    with pytest.raises(ConformanceError, match="not 2-dimensional"):
        testing.input_size("badsize", 2)


def test_tiny_batch_has_the_batch_format():
    batch = testing.tiny_batch(3, (12, 10, 8), batch_size=2, channels=1, num_classes=4)
    assert batch["moving"].shape == (2, 1, 12, 10, 8) and batch["moving"].dtype == torch.float32
    assert batch["moving"].min() >= 0 and batch["moving"].max() <= 1
    assert batch["fixed_label"].dtype == torch.int64
    assert batch["fixed_label"].shape == (2, 1, 12, 10, 8)
    assert set(batch["moving_label"].unique().tolist()) == {0, 1, 2, 3}
    assert batch["moving_landmarks"].shape == (2, 4, 3) and batch["spacing"].shape == (2, 3)
    assert not torch.equal(batch["moving"], batch["fixed"])
    assert torch.equal(testing.tiny_batch(3, (12, 10, 8))["fixed"], batch["fixed"])


def test_model_cases_follow_the_tags(toy_registry):
    toy_registry.register("only-3d", summary="x", tags=("3d",))(lambda ndim=3: ToyDense(ndim))
    assert ("only-3d", 3) in testing.model_cases() and ("only-3d", 2) not in testing.model_cases()
    assert testing.model_cases("toy-o*") == [("toy-offset", 2), ("toy-offset", 3)]
    assert testing.model_cases(plugin="regzoo") == testing.model_cases()
    assert testing.model_cases(plugin="regzoo-models-none") == []
    mark = testing.parametrize_models("toy-o*", slow_dims=(3,))
    names, params = mark.args
    assert names == ("name", "ndim")
    assert [p.values for p in params] == [("toy-offset", 2), ("toy-offset", 3)]
    assert [p.id for p in params] == ["toy-offset-2d", "toy-offset-3d"]
    assert not params[0].marks and [m.name for m in params[1].marks] == ["slow"]


def test_core_warp_with_a_zero_field_is_the_identity():
    image = testing.tiny_batch(2, (17, 23))["moving"]
    assert (warp(image, torch.zeros(2, 2, 17, 23)) - image).abs().max() <= testing.IDENTITY_TOL
    assert regzoo.testing is testing
