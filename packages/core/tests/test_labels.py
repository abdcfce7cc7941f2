"""The label table, one-hot maps within a memory budget and the one label-warping helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import regzoo
import regzoo.labels as labels_module
from regzoo.errors import ConfigError, DataError
from regzoo.labels import (
    BUDGET_ENV,
    LabelTable,
    one_hot,
    region_table,
    warp_label_probabilities,
    warp_labels,
)
from regzoo.spatial import warp

VALUES = (0, 2, 41, 2035, 20000)


def _field(shape: tuple[int, ...], seed: int = 0, amplitude: float = 2.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, len(shape), *(max(2, s // 4) for s in shape), generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return amplitude * F.interpolate(coarse, size=shape, mode=mode, align_corners=True)


def _map(shape: tuple[int, ...], values=VALUES, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(values), (1, 1, *shape), generator=g)
    # blocks, so that warping moves boundaries rather than noise
    index = F.interpolate(index.float()[:, :, ::4, ::4], size=shape, mode="nearest").long()
    out = torch.tensor(values)[index]
    out.view(-1)[: len(values)] = torch.tensor(values)  # every value present
    return out


def test_label_table_round_trips_sparse_values():
    table = LabelTable([20000, 41, 2, 2035, 41])
    assert table.values == VALUES and table.num_classes == 5
    labels = _map((12, 10))
    index = table.encode(labels)
    assert index.dtype == torch.int64 and int(index.max()) == 4
    assert torch.equal(table.decode(index), labels)
    array = labels.numpy()
    assert np.array_equal(table.decode(table.encode(array)), array)
    assert LabelTable.from_maps(labels, None) == table
    assert LabelTable.from_checkpoint({"labels": table.to_list()}) == table
    assert LabelTable.from_checkpoint({}) is None


def test_background_is_always_index_zero():
    assert LabelTable([5, 3]).values == (0, 3, 5)
    with pytest.raises(DataError, match="non-negative"):
        LabelTable([-1, 2])


def test_a_value_outside_the_table_is_a_one_line_data_error():
    table = LabelTable([1, 2])
    with pytest.raises(DataError) as err:
        table.encode(torch.tensor([[0, 7, 2, 9]]), "case_7.nii.gz")
    message = str(err.value)
    assert "\n" not in message and "case_7.nii.gz" in message and "7, 9" in message


def _old_nearest(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    return warp(labels.float(), ddf, mode="nearest").round().long()


def _old_linear(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    k = int(labels.max()) + 1
    hot = F.one_hot(labels[:, 0].long(), k).movedim(-1, 1).float()
    return warp(hot, ddf).argmax(1, keepdim=True)


@pytest.mark.parametrize("shape", [(24, 20), (10, 12, 8)])
def test_warp_labels_equals_the_old_rules_on_dense_labels(shape):
    labels = _map(shape, values=tuple(range(6)))
    ddf = _field(shape)
    assert torch.equal(warp_labels(labels, ddf), _old_nearest(labels, ddf))
    assert torch.equal(warp_labels(labels, ddf, "linear"), _old_linear(labels, ddf))
    hot = warp_label_probabilities(labels, ddf, 6)
    ref = warp(F.one_hot(labels[:, 0], 6).movedim(-1, 1).float(), ddf)
    assert torch.equal(hot, ref)


def test_warp_labels_of_sparse_values_equals_the_old_rules():
    """The old rule warped 20001 one-hot maps; the table warps 5 and gives the same labels."""
    labels, ddf = _map((16, 16)), _field((16, 16), seed=3)
    assert torch.equal(warp_labels(labels, ddf), _old_nearest(labels, ddf))
    assert torch.equal(warp_labels(labels, ddf, "linear"), _old_linear(labels, ddf))


def test_linear_warp_of_label_20000_uses_memory_of_the_labels_present(monkeypatch):
    seen = []

    def spy(labels, num_classes, dtype=torch.float32):
        seen.append(num_classes)
        return one_hot(labels, num_classes, dtype)

    monkeypatch.setattr(labels_module, "one_hot", spy)
    labels, ddf = _map((64, 64)), _field((64, 64))
    # 20001 one-hot maps would take 328 MB; the 5 of the table 82 kB
    monkeypatch.setenv(BUDGET_ENV, "0.001")
    warped = warp_labels(labels, ddf, "linear")
    assert seen == [5]
    assert set(torch.unique(warped).tolist()) <= set(VALUES)


def test_a_one_hot_over_the_budget_is_one_line_before_allocating(monkeypatch):
    labels = torch.zeros(1, 1, 128, 128, 128, dtype=torch.int64)
    allocated = []
    monkeypatch.setattr(labels_module.torch, "zeros", lambda *a, **k: allocated.append(a))
    # the default budget (half the available memory) refuses 8.4 TB
    with pytest.raises(DataError) as err:
        one_hot(labels, 1_000_000)
    message = str(err.value)
    assert "\n" not in message and "1000000 labels" in message and allocated == []
    monkeypatch.setenv(BUDGET_ENV, "0.01")  # 10 MB: 2 labels of 128^3 (16.8 MB) do not fit
    with pytest.raises(DataError, match="2 labels"):
        one_hot(labels, 2)
    assert allocated == []
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(DataError, match=BUDGET_ENV):
        one_hot(labels, 2)


def test_one_hot_refuses_labels_beyond_its_classes():
    with pytest.raises(DataError, match="outside the 3 classes"):
        one_hot(torch.tensor([[[0, 1, 5]]]), 3)


def test_models_warp_labels_with_the_width_of_the_label_table():
    model = regzoo.create_model("voxelmorph", ndim=2)
    batch = {
        "moving": torch.rand(1, 1, 16, 16),
        "fixed": torch.rand(1, 1, 16, 16),
        "moving_label": torch.randint(0, 3, (1, 1, 16, 16)),
        "fixed_label": torch.randint(0, 4, (1, 1, 16, 16)),
    }
    assert model(batch).warped_label.shape[1] == 4  # 1 + the largest index in the batch
    model.label_table = LabelTable(VALUES + (7, 9))
    assert model(batch).warped_label.shape[1] == 7  # the table's labels, whatever the batch


def test_region_table_maps_each_label_to_its_region_and_checks_the_lists():
    assert region_table(None, 3).tolist() == [0, 1, 2]
    assert region_table([[0, 2], [1, 3]]).tolist() == [0, 1, 0, 1]
    assert region_table([[1], [0]], 2).tolist() == [1, 0]
    with pytest.raises(ConfigError, match="^synth: regions must hold each label index in"):
        region_table([[0, 1], [1]], 2, name="synth: regions")
    with pytest.raises(ConfigError, match="in \\[0, 2\\) once"):
        region_table([[0, 2], [1]], 2)
    with pytest.raises(ConfigError, match="leave out label indices \\[1\\]"):
        region_table([[0, 2]])
