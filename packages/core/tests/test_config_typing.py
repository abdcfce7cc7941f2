"""Typed configs: fields typed from signatures, ``**kwargs`` refused, lazy ``target=`` entries,
choices of the run config checked when it is resolved."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from omegaconf import OmegaConf

import regzoo.registry as reg
from regzoo.config import EvalConfig, TrainConfig, parse_overrides, validate_choices
from regzoo.errors import ConfigError


@pytest.fixture
def scratch(monkeypatch):
    """A throw-away model registry so tests do not leak entries."""
    fresh = reg.Registry("model")
    monkeypatch.setitem(reg._REGISTRIES, "model", fresh)
    return fresh


def test_signature_fields_have_their_real_types(scratch):
    @scratch.register("typed", summary="x")
    def typed(
        width: int = 16,
        scale: float = 1.0,
        flag: bool = False,
        mode: str = "a",
        sizes: Sequence[int] = (16, 32),
        pair: tuple[int, int] = (1, 2),
        labels: list[int] | None = None,
        loss: Mapping[str, Any] = {"name": "ncc"},  # noqa: B006
        part: str | Mapping[str, Any] = "dense",
        limit: Optional[float] = None,
    ) -> dict[str, Any]:
        return locals()

    cfg = scratch.get("typed").default_config()
    assert OmegaConf.to_container(cfg) == {
        "width": 16,
        "scale": 1.0,
        "flag": False,
        "mode": "a",
        "sizes": [16, 32],
        "pair": [1, 2],
        "labels": None,
        "loss": {"name": "ncc"},
        "part": "dense",
        "limit": None,
    }
    for key, value in [
        ("width", "abc"),
        ("scale", "abc"),
        ("flag", "maybe"),
        ("sizes", ["a"]),
        ("pair", "abc"),
        ("labels", ["x"]),
        ("loss", "abc"),
        ("limit", "abc"),
    ]:
        with pytest.raises(ConfigError, match=rf"model 'typed': {key}(\[0\])?: ") as err:
            scratch.config("typed", {key: value})
        assert "\n" not in str(err.value)
    built = scratch.build({"name": "typed", "width": 8, "labels": [1, 2], "limit": 0.5})
    assert (built["width"], built["labels"], built["limit"]) == (8, [1, 2], 0.5)
    assert scratch.build({"name": "typed", "part": {"name": "svf"}})["part"] == {"name": "svf"}
    # a mutable default is copied, never shared between builds
    scratch.build("typed")["loss"]["name"] = "changed"
    assert scratch.build("typed")["loss"] == {"name": "ncc"}


@pytest.mark.parametrize("star", ["**kwargs", "*args"])
def test_builder_taking_var_arguments_is_refused(scratch, star):
    namespace: dict[str, Any] = {}
    exec(f"def shim(ndim: int = 2, {star}):\n    return ndim", namespace)
    with pytest.raises(ValueError, match=rf"takes \{star}.*config=.*target="):
        scratch.register("shim", summary="x")(namespace["shim"])
    with pytest.raises(ValueError, match=rf"takes \{star}"):
        scratch.register("shim", summary="x", config=_ToyConfig)(namespace["shim"])
    assert "shim" not in scratch._entries


@dataclass
class _ToyConfig:
    """The toy target's config."""

    width: int = 4
    sizes: list[int] = field(default_factory=lambda: [1, 2])


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """An importable module ``regzoo_toy_target.impl`` with a class ``Toy``."""
    package = tmp_path / "regzoo_toy_target"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "impl.py").write_text(
        textwrap.dedent(
            """
            class Toy:
                def __init__(self, width: int = 4, sizes=(1, 2)):
                    self.width, self.sizes = width, list(sizes)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "regzoo_toy_target"
    for module in [m for m in sys.modules if m.startswith("regzoo_toy_target")]:
        del sys.modules[module]


def test_target_is_imported_only_when_built(scratch, toy_package):
    entry = scratch.register(
        "toy", summary="x", config=_ToyConfig, target=f"{toy_package}.impl:Toy"
    )
    assert entry.target == f"{toy_package}.impl:Toy"
    assert f"{toy_package}.impl" not in sys.modules
    assert reg._qualname(entry.builder) == f"{toy_package}.impl.Toy"  # owner known unimported
    assert OmegaConf.to_container(entry.default_config()) == {"width": 4, "sizes": [1, 2]}
    with pytest.raises(ConfigError, match="width"):
        scratch.build({"name": "toy", "width": "abc"})
    assert f"{toy_package}.impl" not in sys.modules

    toy = scratch.build({"name": "toy", "width": 7})
    assert f"{toy_package}.impl" in sys.modules
    assert type(toy).__name__ == "Toy" and (toy.width, toy.sizes) == (7, [1, 2])


def test_target_needs_a_config_and_a_valid_name(scratch, toy_package):
    with pytest.raises(ValueError, match="target= needs config="):
        scratch.register("toy", summary="x", target=f"{toy_package}.impl:Toy")
    with pytest.raises(ValueError, match="package.module:attribute"):
        scratch.register("toy", summary="x", config=_ToyConfig, target=f"{toy_package}.impl.Toy")
    scratch.register("gone", summary="x", config=_ToyConfig, target=f"{toy_package}.impl:Gone")
    with pytest.raises(ImportError, match="has no 'Gone'"):
        scratch.build("gone")


def _run_config(**sections: dict[str, Any]) -> Any:
    cfg = OmegaConf.create(
        {"train": OmegaConf.structured(TrainConfig), "eval": OmegaConf.structured(EvalConfig)}
    )
    return OmegaConf.merge(cfg, sections)


def test_default_run_config_has_valid_choices():
    validate_choices(_run_config())


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"train": {"optimizer": "adm"}}, "train.optimizer must be one of adam, adamw"),
        ({"train": {"scheduler": "cosine"}}, "train.scheduler must be one of none, poly"),
        ({"train": {"amp": "fp8"}}, "train.amp must be one of no, bf16, fp16"),
        ({"eval": {"label_warp": "cubic"}}, "eval.label_warp must be one of nearest, linear"),
        ({"eval": {"metrics": ["dice", "dise"]}}, "unknown metric 'dise' (did you mean dice?)"),
    ],
)
def test_unknown_choices_are_one_line_errors(sections, needle):
    with pytest.raises(ConfigError) as err:
        validate_choices(_run_config(**sections))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_overrides_parse_yes_and_no_as_strings():
    """``train.amp=no`` must reach the string field as ``no``, not as the boolean False."""
    assert parse_overrides(["train.amp=no", "eval.overview=false"]) == {
        "train": {"amp": "no"},
        "eval": {"overview": False},
    }
    assert _run_config(eval={"overview": "no"}).eval.overview is False


def test_a_part_given_another_name_is_replaced_not_merged():
    from regzoo.config import resolve_config

    cfg = resolve_config("voxelmorph", overrides=parse_overrides(["model.similarity.name=mse"]))
    assert OmegaConf.to_container(cfg.model.similarity) == {"name": "mse"}
    kept = resolve_config("voxelmorph", overrides=parse_overrides(["model.similarity.window=7"]))
    assert kept.model.similarity.name == "lncc" and kept.model.similarity.window == 7
