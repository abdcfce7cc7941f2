"""Every registered model has one typed config, the one source of its defaults (all plugins).

The class an entry names (``target=``) built directly with the entry's config defaults is the
model ``create_model`` builds: same ``state_dict`` keys and shapes, equal loss terms on a fixed
batch and seed. The class built with no arguments is its first entry (``VoxelMorph()`` is
``voxelmorph``). Type errors and unknown choices stop ``regzoo train`` in one line before step 1.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

import regzoo
from regzoo.catalog import load_catalog
from regzoo.cli import main
from regzoo.config import EvalConfig, TrainConfig
from regzoo.registry import get_entry
from regzoo.testing import input_size, one_thread, suite_config, tiny_batch

one_thread = pytest.fixture(autouse=True)(one_thread)

# The shipped models (their manifests), not those other test modules register in this process.
MODELS = load_catalog().names("model")
NDIM = 2  # or the one dimensionality of a model that claims only 3D (transmorph-affine)


def _ndim(name: str) -> int:
    dims = get_entry("model", name).dims
    return NDIM if NDIM in dims else dims[0]


def _defaults(name: str) -> dict[str, Any]:
    return OmegaConf.to_container(get_entry("model", name).default_config(), resolve=True)


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build()


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(1)  # stochastic models (sampling, dropout) draw the same noise
    with torch.no_grad():
        return model.loss(batch, model(batch))


def _assert_same_model(name: str, direct: torch.nn.Module, registered: torch.nn.Module) -> None:
    shapes = {k: tuple(v.shape) for k, v in direct.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in registered.state_dict().items()}, name
    channels = int(_defaults(name).get("in_channels", 1))
    ndim = _ndim(name)
    batch = tiny_batch(ndim, input_size(name, ndim), channels=channels)
    got, expected = _loss(direct, batch), _loss(registered, batch)
    assert sorted(got) == sorted(expected), name
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=f"{name}: loss term {key!r}")


def test_every_model_is_a_config_and_a_target():
    """One way to declare an entry: a config dataclass and the class it builds, lazily."""
    for name in MODELS:
        entry = get_entry("model", name)
        assert entry.target and dataclasses.is_dataclass(entry.config), name
        assert ":" in entry.target, name


@pytest.mark.parametrize("name", MODELS)
def test_class_with_the_config_defaults_is_the_registered_model(name):
    entry = get_entry("model", name)
    cls = entry.builder.load()
    small = suite_config(name, _ndim(name))
    direct = _seeded(lambda: cls(**{**_defaults(name), **small}))
    registered = _seeded(lambda: regzoo.create_model(name, **small))
    _assert_same_model(name, direct, registered)


def _signature_defaults(cls: type) -> dict[str, Any]:
    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _first_entries() -> list[tuple[str, str]]:
    """(target, the first entry, by name, whose defaults the class's own signature agrees with)."""
    by_target: dict[str, list[str]] = defaultdict(list)
    for name in MODELS:
        by_target[get_entry("model", name).target].append(name)
    cases = []
    for target, names in sorted(by_target.items()):
        own = _signature_defaults(get_entry("model", names[0]).builder.load())
        agree = [
            n
            for n in names
            if all(_defaults(n).get(k, v) == _plain(v) for k, v in own.items() if k in _defaults(n))
        ]
        cases.append((target, agree[0] if agree else ""))
    return cases


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize(("target", "name"), _first_entries())
def test_class_built_directly_is_its_first_entry(target, name):
    """``VoxelMorph()`` has voxelmorph's network and loss terms, ``TransMorph()`` transmorph's."""
    assert name, f"{target}: no registered entry has the defaults of the class's signature"
    cls = get_entry("model", name).builder.load()
    small = suite_config(name, _ndim(name))
    direct = _seeded(lambda: cls(**small))
    registered = _seeded(lambda: regzoo.create_model(name, **small))
    _assert_same_model(name, direct, registered)


def _config_classes() -> list[type]:
    found = {TrainConfig, EvalConfig}
    for name in MODELS:
        found.add(get_entry("model", name).config)
    return sorted(found, key=lambda c: c.__qualname__)


@pytest.mark.parametrize("config", _config_classes(), ids=lambda c: c.__qualname__)
def test_each_nullable_field_says_what_null_means(config):
    docs = " ".join(
        " ".join((c.__doc__ or "").split())
        for c in config.__mro__
        if dataclasses.is_dataclass(c) and not (c.__doc__ or "").startswith(c.__name__ + "(")
    )
    for f in dataclasses.fields(config):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is None:
            pattern = rf"``{f.name}``[^.;]{{0,60}}\bnull\b"
            assert re.search(pattern, docs), f"{config.__qualname__}.{f.name}: say what null means"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["jssr", "model.smooth_weight=abc"], "smooth_weight: Value 'abc'"),
        (["example-affine", "model.features=abc"], "features: "),
        (["voxelmorph", "data.size=abc"], "size must be int | Sequence[int], got 'abc'"),
        (["voxelmorph", "data.size=[64,abc]"], "size must be int | Sequence[int]"),
        (["voxelmorph", "data.num_subjects=abc"], "num_subjects must be int | Mapping"),
        (["voxelmorph", "train.optimizer=adm"], "train.optimizer must be one of"),
        (["voxelmorph", "train.scheduler=cosine"], "train.scheduler must be one of"),
        (["voxelmorph", "train.amp=fp8"], "train.amp must be one of"),
        (["voxelmorph", "eval.metrics=[dice,dise]"], "unknown metric 'dise'"),
        (["voxelmorph", "eval.label_warp=cubic"], "eval.label_warp must be one of"),
    ],
)
def test_wrong_types_and_choices_stop_train_in_one_line(args, needle, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", *args, "--out", str(run), "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("regzoo: error: ") and needle in err[0], err
    assert not run.exists()  # stopped before the run (and its first step) began


def test_info_shows_the_real_default_loss(capsys):
    assert main(["info", "example-affine", "--json"]) == 0
    info = capsys.readouterr().out
    assert '"similarity": {\n      "name": "ncc"\n    }' in info
