"""One VoxelMorph-2 training step (forward, LNCC + 1.0 x gradient-l2 loss, backward, Adam step):
``regzoo.create_model("voxelmorph")`` beside the same architecture assembled from MONAI's parts
(``monai.networks.nets.VoxelMorph`` with ``VoxelMorphUNet`` channels that give the paper's layers and
parameter count, MONAI's ``LocalNormalizedCrossCorrelationLoss``, ``DiffusionLoss`` and ``Warp``).

Cases (issue 7): 2D 192x160 batch 8, 3D 96x112x128 batch 1.
"""

from __future__ import annotations

import pytest
import torch

SHAPES = {"2d": (8, 1, 192, 160), "3d": (1, 1, 96, 112, 128)}
QUICK = {"2d": (2, 1, 64, 48), "3d": (1, 1, 32, 32, 48)}
# VoxelMorph-2: encoder [16, 32, 32, 32], decoder [32, 32, 32, 32, 32, 16, 16] in MONAI's terms
MONAI_CHANNELS = (16, 32, 32, 32, 32, 32, 32, 32)


def regzoo_step(ndim: int, device: torch.device):
    import regzoo
    from regzoo.engine.optim import make_optimizer
    from regzoo.models import Optimizers

    model = regzoo.create_model("voxelmorph", ndim=ndim).to(device)
    optim = Optimizers({"model": make_optimizer(model.parameters(), lr=1e-4)})
    counter = iter(range(10**9))

    def step(batch):
        model.training_step(batch, optim, next(counter))

    return model, step


def monai_step(ndim: int, device: torch.device):
    from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    backbone = VoxelMorphUNet(
        spatial_dims=ndim,
        in_channels=2,
        unet_out_channels=32,
        channels=MONAI_CHANNELS,
        final_conv_channels=(16, 16),
    )
    model = VoxelMorph(backbone, integration_steps=0, spatial_dims=ndim).to(device)
    similarity = LocalNormalizedCrossCorrelationLoss(spatial_dims=ndim, kernel_size=9)
    regularizer = DiffusionLoss()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(batch):
        warped, ddf = model(batch["moving"], batch["fixed"])
        loss = similarity(warped, batch["fixed"]) + 1.0 * regularizer(ddf)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    return model, step


@pytest.mark.parametrize("impl", ["regzoo", "monai"])
@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_voxelmorph_training_step(measure, make, quick, device, dim, impl):
    shape = (QUICK if quick else SHAPES)[dim]
    ndim = len(shape) - 2
    model, step = (regzoo_step if impl == "regzoo" else monai_step)(ndim, device)
    batch = {"moving": make.image(shape, 0).to(device), "fixed": make.image(shape, 1).to(device)}
    measure(
        lambda: step(batch),
        device=device,
        case=f"voxelmorph-2 step {dim} {'x'.join(map(str, shape))}",
        impl=impl,
        pass_="training step",
        rounds=3,
        parameters=sum(p.numel() for p in model.parameters()),
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_same_architecture(ndim):
    """Not a timing: both networks have VoxelMorph-2's parameter count (the official VxmDense)."""
    counts = [
        sum(p.numel() for p in f(ndim, torch.device("cpu"))[0].parameters())
        for f in (regzoo_step, monai_step)
    ]
    assert counts[0] == counts[1] == {2: 109_170, 3: 327_331}[ndim]
