"""``synth-lesion``: one image of each pair holds a lesion, the other none."""

from __future__ import annotations

import pytest
import torch

import regzoo
from regzoo.errors import ConfigError


def test_each_pair_has_a_one_sided_lesion_of_the_set_size() -> None:
    data = regzoo.build("dataset", {"name": "synth-lesion", "split": "test", "lesion_radius": 6})
    plain = regzoo.build("dataset", {"name": "synth", "split": "test", "pairing": "random"})
    assert data.lesion_label == 6 and list(data.label_table.values) == list(range(7))
    sides = set()
    for i in range(8):
        item, base = data[i], plain[i]
        lesion = {s: item[f"{s}_label"] == 6 for s in ("moving", "fixed")}
        side = "moving" if lesion["moving"].any() else "fixed"
        other = "fixed" if side == "moving" else "moving"
        sides.add(side)
        assert not lesion[other].any()
        assert 3.0**2 * 3.14 * 0.8 <= lesion[side].sum() <= 6.0**2 * 3.14 * 1.2
        assert torch.all(item[side][lesion[side]] == 1.0)
        # elsewhere the pair is the plain data's pair, and the true field is the anatomy's
        assert torch.equal(item[side][~lesion[side]], base[side][~lesion[side]])
        assert torch.equal(item[other], base[other])
        assert torch.equal(item["true_ddf"], base["true_ddf"])
        assert torch.equal(data[i][side], item[side])  # deterministic
    assert sides == {"moving", "fixed"}
    with pytest.raises(ConfigError, match="lesion_radius"):
        regzoo.build("dataset", {"name": "synth-lesion", "lesion_radius": 0.5})
