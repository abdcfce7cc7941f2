"""TransMorph, TransMorph-diff, TransMorph-bspl and TransMorph-Bayes as regzoo models.

Chen, Frey, He, Segars, Li, Du, "TransMorph: Transformer for unsupervised medical image
registration", Medical Image Analysis 82:102615, 2022 (doi 10.1016/j.media.2022.102615).

Each class keeps the official network's module names, so the authors' checkpoints load with
:meth:`load_weights` (``regzoo ... --weights FILE``). The variants are different networks, as in the
official code: -diff and -bspl stop the decoder at half resolution and put their own heads on it
(-diff-fullres keeps the full decoder and integrates its velocity there), -Bayes wraps the network as ``net`` and adds Monte-Carlo dropout. Inputs of any size are padded at
the end of each axis to a multiple of 32 (patch 4, three patch mergings) and the outputs cropped
back; at sizes that are multiples of 32 (160x192x224) the computation is the official one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.errors import ConfigError, UserError
from regzoo.losses import degree_map
from regzoo.models import (
    Batch,
    Optimizers,
    RegistrationLoss,
    RegistrationModel,
    RegistrationOutput,
)
from regzoo.nn import conv_nd, interpolation_mode
from regzoo.spatial import control_grid_shape, integrate_velocity, warp

from .bspline import bspline_to_dense
from .checkpoint import load_official_checkpoint
from .configs import (
    TransMorphBayesConfig,
    TransMorphBSplineConfig,
    TransMorphConfig,
    TransMorphDiffConfig,
)
from .network import (
    TransMorphTrunk,
    _drop_sampling_grid,
    crop_to,
    pad_to_multiple,
    registration_head,
)

__all__ = [
    "TransMorph",
    "TransMorphDiff",
    "TransMorphBSpline",
    "TransMorphBayes",
    "BAYES_SELECTIONS",
    "reversed_pair",
]

#: What :meth:`TransMorphBayes.sample` returns as the field: the Monte-Carlo mean, or the sample
#: whose warped image has the lowest MSE to the fixed image (the official evaluation scripts).
BAYES_SELECTIONS = ("mean", "min_mse")

# The registered entries' configs are the one source of the classes' defaults.
_DEFAULTS = TransMorphConfig()
_DIFF = TransMorphDiffConfig()
_BSPLINE = TransMorphBSplineConfig()
_BAYES = TransMorphBayesConfig()


def reversed_pair(batch: Batch) -> dict[str, Any]:
    """``batch`` with the moving and fixed sides exchanged: ``moving`` <-> ``fixed`` and every
    ``moving_*`` <-> ``fixed_*`` (labels, masks, landmarks); other keys (``spacing``) as they are."""
    out = {}
    for key, value in batch.items():
        for side, other in (("moving", "fixed"), ("fixed", "moving")):
            if key == side or key.startswith(side + "_"):
                key = other + key[len(side) :]
                break
        out[key] = value
    return out


class _TransMorphModel(RegistrationModel):
    """What the family shares: the input pair, padding, the output, official checkpoints, the
    training step."""

    #: State-dict prefixes of parameters the official network holds but never uses.
    unused_official_keys: tuple[str, ...] = ()
    #: A second update on the reversed pair in every training step (set from the config).
    bidirectional_step: bool = False

    def training_step(self, batch: Batch, optim: Optimizers, step: int) -> dict[str, torch.Tensor]:
        """One update on (moving, fixed); with :attr:`bidirectional_step` then a second one on
        (fixed, moving), labels exchanged too, as the official OASIS and top-level training
        scripts do. Both updates take the step's learning rate (the schedule advances once).

        Returns:
            The loss terms; with two updates, each term's mean over both.
        """
        if not self.bidirectional_step:
            return super().training_step(batch, optim, step)
        updates = []
        for pair, last in ((batch, False), (reversed_pair(batch), True)):
            terms = self.loss(pair, self(pair))
            optim.step(terms["loss"], schedule=last)
            updates.append(terms)
        return {k: (updates[0][k].detach() + updates[1][k].detach()) / 2 for k in updates[0]}

    def load_weights(self, state: Mapping[str, Any]) -> None:
        """Load an official TransMorph state dict (or a regzoo one); see :mod:`.checkpoint`.

        Called by regzoo's engine for ``--weights FILE``. Size-dependent buffers
        (``relative_position_index``, ``spatial_trans.grid``) and ``module.`` prefixes are dropped;
        everything else must match names and shapes exactly.
        """
        load_official_checkpoint(self, state)

    def _concat(self, batch: Batch) -> torch.Tensor:
        """The network input: moving and fixed images concatenated, ``(B, 2C, *S)``."""
        moving, fixed = batch["moving"], batch["fixed"]
        if moving.dim() != self.ndim + 2 or moving.shape != fixed.shape:
            raise UserError(
                f"{type(self).__name__} ({self.ndim}D) needs moving and fixed images of one size "
                f"(B, C, *{self.ndim} axes), got {tuple(moving.shape)} and {tuple(fixed.shape)}"
            )
        return torch.cat([moving, fixed], dim=1)

    def _pair(self, batch: Batch) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The input pair padded to :attr:`size_multiple`, and the spatial size to crop back to."""
        return pad_to_multiple(self._concat(batch), self.size_multiple), tuple(
            batch["moving"].shape[2:]
        )

    def _output(self, batch: Batch, ddf: torch.Tensor, **fields: Any) -> RegistrationOutput:
        out = RegistrationOutput(warped=warp(batch["moving"], ddf), ddf=ddf, **fields)
        criterion = getattr(self, "criterion", None)
        uses_labels = criterion is not None and criterion.segmentation is not None
        if uses_labels and "fixed_label" in batch:
            out.warped_label = self.warp_moving_labels(batch, ddf)
        return out

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        return self.criterion(batch, out)


class TransMorph(TransMorphTrunk, _TransMorphModel):
    """TransMorph: Swin encoder, convolutional decoder, dense displacement head.

    The official defaults (46,771,251 parameters in 3D): patch 4, embed 96, depths (2, 2, 4, 2),
    heads (4, 4, 8, 8), windows (5, 6, 7), drop-path 0.3, relative position bias, two conv skips,
    a head initialised from N(0, 1e-5). Objective: ``similarity(warped, fixed) + reg_weight *
    regularizer(ddf) [+ seg_weight * segmentation]``, -LNCC(9) + Grad-l2 by default.

    Args:
        ndim: 2 or 3 (2D is the official RaFD variant: windows (8, 8), 2-channel head).
        in_channels: channels of each of the moving and fixed images (concatenated in the net).
        similarity, regularizer, segmentation: registry loss configs.
        reg_weight, seg_weight: their weights.
        bidirectional_step: a second update on the reversed pair in every training step
            (:meth:`training_step`; official OASIS and top-level scripts).
        **network: sizes of :class:`~regzoo_transmorph.network.TransMorphTrunk` (``embed_dim``,
            ``depths``, ``num_heads``, ``window_size``, ``use_checkpoint``, ...).
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        similarity: Mapping[str, Any] = _DEFAULTS.similarity,
        regularizer: Mapping[str, Any] = _DEFAULTS.regularizer,
        reg_weight: float = _DEFAULTS.reg_weight,
        segmentation: Mapping[str, Any] = _DEFAULTS.segmentation,
        seg_weight: float = _DEFAULTS.seg_weight,
        bidirectional_step: bool = _DEFAULTS.bidirectional_step,
        **network: Any,
    ) -> None:
        super().__init__(ndim=ndim, in_channels=2 * in_channels, full_resolution=True, **network)
        self.bidirectional_step = bidirectional_step
        self.reg_head = registration_head(ndim, self.out_channels)
        self.criterion = RegistrationLoss(
            similarity, regularizer, reg_weight, segmentation, seg_weight, field="ddf"
        )

    def forward(self, batch: Batch) -> RegistrationOutput:
        x, shape = self._pair(batch)
        ddf = crop_to(self.reg_head(self.features(x)), shape)
        return self._output(batch, ddf)


class TransMorphDiff(TransMorphTrunk, _TransMorphModel):
    """TransMorph-diff: probabilistic diffeomorphic TransMorph (Dalca et al. 2019's model).

    With ``downsample`` (``transmorph-diff``) the decoder stops at half resolution (``up3`` with
    ``reg_head_chan`` channels), without it (``transmorph-diff-fullres``, the official
    ``TransMorphDiff-Org-Res``) it runs the full decoder (``up4``, ``c2``) to full resolution;
    two 3x3 heads give the mean ``mu`` and log-variance ``log_sigma`` of a stationary velocity on
    that grid. Training samples ``mu + exp(log_sigma / 2) * eps``, inference uses ``mu``. As in
    the official code the sample is squared ``int_steps`` times without dividing by
    ``2**int_steps`` first (the velocity is ``2**int_steps * mu``, in voxels of the integration
    grid), and with ``downsample`` the half-resolution displacement is upsampled x2 without
    rescaling its values, so released weights give the released fields.

    Loss (official): ``MSE(warped, fixed) / image_sigma**2 + ndim / 2 * (mean(prior_lambda * D *
    exp(log_sigma) - log_sigma) + prior_lambda_mean * P)``, ``D`` the number of face neighbours
    of each voxel, ``P = mean(sum_i (d u_i / d x_i)**2) / 2`` on the integrated displacement
    ``u`` on the integration grid (one-sided differences at the border).

    Args:
        ndim, in_channels: as :class:`TransMorph`.
        reg_head_chan: channels of the last decoder block (16).
        int_steps: squarings (7).
        image_sigma: noise of the image likelihood (0.01).
        prior_lambda: weight of the variance terms (10).
        prior_lambda_mean: weight of the smoothness term (10).
        downsample: integrate at half resolution (``True``) or at full resolution.
        bidirectional_step: as :class:`TransMorph`.
        **network: encoder/decoder sizes of :class:`TransMorphTrunk`.
    """

    def __init__(
        self,
        ndim: int = _DIFF.ndim,
        in_channels: int = _DIFF.in_channels,
        reg_head_chan: int = _DIFF.reg_head_chan,
        int_steps: int = _DIFF.int_steps,
        image_sigma: float = _DIFF.image_sigma,
        prior_lambda: float = _DIFF.prior_lambda,
        prior_lambda_mean: float = _DIFF.prior_lambda_mean,
        downsample: bool = _DIFF.downsample,
        bidirectional_step: bool = _DIFF.bidirectional_step,
        **network: Any,
    ) -> None:
        super().__init__(
            ndim=ndim,
            in_channels=2 * in_channels,
            reg_head_chan=reg_head_chan,
            up3_channels=reg_head_chan if downsample else None,
            full_resolution=not downsample,
            **network,
        )
        conv = conv_nd(ndim)
        self.flow_mean = conv(reg_head_chan, ndim, 3, padding=1)
        self.flow_sigma = conv(reg_head_chan, ndim, 3, padding=1)
        # Official init; flow_mean keeps PyTorch's default bias.
        nn.init.normal_(self.flow_mean.weight, 0.0, 1e-5)
        nn.init.normal_(self.flow_sigma.weight, 0.0, 1e-10)
        nn.init.constant_(self.flow_sigma.bias, -10.0)
        self.downsample = downsample
        self.bidirectional_step = bidirectional_step
        self.int_steps = int_steps
        self.image_sigma = image_sigma
        self.prior_lambda = prior_lambda
        self.prior_lambda_mean = prior_lambda_mean

    def forward(self, batch: Batch) -> RegistrationOutput:
        x, shape = self._pair(batch)
        feats = self.features(x)
        mean, log_sigma = self.flow_mean(feats), self.flow_sigma(feats)
        flow = mean + torch.exp(0.5 * log_sigma) * torch.randn_like(mean) if self.training else mean
        velocity = flow * 2**self.int_steps
        integrated = integrate_velocity(velocity, self.int_steps)
        ddf = integrated
        grid_shape = shape
        if self.downsample:
            ddf = F.interpolate(
                integrated, scale_factor=2, mode=interpolation_mode(self.ndim), align_corners=False
            )
            grid_shape = [(s + 1) // 2 for s in shape]
        return self._output(
            batch,
            crop_to(ddf, shape),
            velocity=crop_to(velocity, grid_shape),
            extras={
                "flow_mean": crop_to(mean, grid_shape),
                "flow_log_sigma": crop_to(log_sigma, grid_shape),
                "ddf_integrated": crop_to(integrated, grid_shape),
            },
        )

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        recon = torch.mean((batch["fixed"] - out.warped) ** 2) / self.image_sigma**2
        log_sigma, u = out.extras["flow_log_sigma"], out.extras["ddf_integrated"]
        degree = degree_map(tuple(log_sigma.shape[2:]), log_sigma.device, log_sigma.dtype)
        sigma_term = torch.mean(self.prior_lambda * degree * torch.exp(log_sigma) - log_sigma)
        divergence_sq = sum(torch.gradient(u[:, i], dim=i + 1)[0] ** 2 for i in range(self.ndim))
        prec_term = 0.5 * torch.mean(divergence_sq)
        kl = 0.5 * self.ndim * (sigma_term + self.prior_lambda_mean * prec_term)
        return {"similarity": recon, "regularizer": kl, "loss": recon + kl}


class TransMorphBSpline(TransMorphTrunk, _TransMorphModel):
    """TransMorph-bspl: a cubic B-spline stationary velocity, integrated (MIDIR's head).

    The half-resolution decoder output is resized (linear) to the control grid, passed through
    ``len(resize_channels)`` 3x3 convolutions with LeakyReLU(0.2) and a 3x3 output convolution
    (He-uniform init) giving control-point velocities every ``cps`` voxels; the dense velocity is
    the B-spline interpolant (:func:`~regzoo_transmorph.bspline.bspline_to_dense`), integrated by
    ``int_steps`` squarings. Objective: -LNCC(9) + Grad-l2 on the velocity (official).

    Deviation: the official squaring samples with ``align_corners=False`` on an
    ``align_corners=True`` identity grid (stretching by ``n / (n - 1)``); regzoo's consistent warp
    is used instead.

    Args:
        ndim, in_channels, similarity, regularizer, reg_weight, segmentation, seg_weight: as
            :class:`TransMorph`.
        cps: control-point spacing per axis in voxels (``None``: 3 per axis).
        resize_channels: widths of the convolutions after resizing ((32, 32)).
        int_steps: squarings (7).
        bidirectional_step: as :class:`TransMorph`.
        **network: encoder/decoder sizes of :class:`TransMorphTrunk`.
    """

    def __init__(
        self,
        ndim: int = _BSPLINE.ndim,
        in_channels: int = _BSPLINE.in_channels,
        cps: Sequence[int] | None = _BSPLINE.cps,
        resize_channels: Sequence[int] = _BSPLINE.resize_channels,
        int_steps: int = _BSPLINE.int_steps,
        similarity: Mapping[str, Any] = _BSPLINE.similarity,
        regularizer: Mapping[str, Any] = _BSPLINE.regularizer,
        reg_weight: float = _BSPLINE.reg_weight,
        segmentation: Mapping[str, Any] = _BSPLINE.segmentation,
        seg_weight: float = _BSPLINE.seg_weight,
        bidirectional_step: bool = _BSPLINE.bidirectional_step,
        **network: Any,
    ) -> None:
        super().__init__(ndim=ndim, in_channels=2 * in_channels, full_resolution=False, **network)
        self.bidirectional_step = bidirectional_step
        self.cps = tuple(int(c) for c in (cps or (3,) * ndim))
        if len(self.cps) != ndim or min(self.cps) < 1:
            raise ConfigError(f"cps needs {ndim} positive spacings, got {list(self.cps)}")
        conv = conv_nd(ndim)
        widths = [self.out_channels, *resize_channels]
        self.resize_conv = nn.ModuleList(
            nn.Sequential(conv(widths[i], widths[i + 1], 3, padding=1), nn.LeakyReLU(0.2))
            for i in range(len(resize_channels))
        )
        for layer in self.resize_conv:
            nn.init.kaiming_uniform_(layer[0].weight, a=0.2)
        self.out_layer = conv(widths[-1], ndim, 3, padding=1)
        nn.init.kaiming_uniform_(self.out_layer.weight, a=0.0)
        self.int_steps = int_steps
        self.criterion = RegistrationLoss(
            similarity, regularizer, reg_weight, segmentation, seg_weight, field="velocity"
        )

    def forward(self, batch: Batch) -> RegistrationOutput:
        x, shape = self._pair(batch)
        padded = x.shape[2:]
        y = F.interpolate(
            self.features(x),
            size=control_grid_shape(padded, self.cps),
            mode=interpolation_mode(self.ndim),
            align_corners=False,
        )
        for layer in self.resize_conv:
            y = layer(y)
        control = self.out_layer(y)
        velocity = bspline_to_dense(control, padded, self.cps)
        ddf = integrate_velocity(velocity, self.int_steps)
        return self._output(
            batch,
            crop_to(ddf, shape),
            velocity=crop_to(velocity, shape),
            extras={"control": control},
        )


class TransMorphBayes(_TransMorphModel):
    """TransMorph-Bayes: TransMorph with Monte-Carlo dropout for registration uncertainty.

    Dropout at ``mc_drop`` (0.15) on attention weights, attention projections and MLPs of every
    Swin block and channel dropout on both convolutional skips; it stays active at inference, so
    each forward pass is one sample of the field. :meth:`sample` draws ``k`` of them and returns
    their mean (``bayes_select="mean"``, the default) or, as the official evaluation scripts do,
    the one whose warped image has the lowest MSE to the fixed image (``"min_mse"``). Layout as
    official: the network is ``net`` and the head ``reg_head`` beside it; the official ``net``
    also holds a ``reg_head`` and a ``sigma_head`` its forward pass never uses, which are dropped
    from checkpoints on load (:attr:`unused_official_keys`).

    Args:
        ndim, in_channels, similarity, regularizer, reg_weight, segmentation, seg_weight: as
            :class:`TransMorph`.
        mc_drop: Monte-Carlo dropout rate.
        bayes_select: the field :meth:`sample` returns, one of :data:`BAYES_SELECTIONS`.
        bidirectional_step: as :class:`TransMorph`.
        **network: encoder/decoder sizes of :class:`TransMorphTrunk`.
    """

    unused_official_keys = ("net.reg_head.", "net.sigma_head.")

    def __init__(
        self,
        ndim: int = _BAYES.ndim,
        in_channels: int = _BAYES.in_channels,
        mc_drop: float = _BAYES.mc_drop,
        bayes_select: str = _BAYES.bayes_select,
        similarity: Mapping[str, Any] = _BAYES.similarity,
        regularizer: Mapping[str, Any] = _BAYES.regularizer,
        reg_weight: float = _BAYES.reg_weight,
        segmentation: Mapping[str, Any] = _BAYES.segmentation,
        seg_weight: float = _BAYES.seg_weight,
        bidirectional_step: bool = _BAYES.bidirectional_step,
        **network: Any,
    ) -> None:
        super().__init__()
        if bayes_select not in BAYES_SELECTIONS:
            raise ConfigError(
                f"bayes_select must be one of {', '.join(BAYES_SELECTIONS)}, got {bayes_select!r}"
            )
        self.bayes_select = bayes_select
        self.bidirectional_step = bidirectional_step
        self.ndim = ndim
        self.net = TransMorphTrunk(
            ndim=ndim, in_channels=2 * in_channels, full_resolution=True, mc_drop=mc_drop, **network
        )
        self.reg_head = registration_head(ndim, self.net.out_channels)
        self.criterion = RegistrationLoss(
            similarity, regularizer, reg_weight, segmentation, seg_weight, field="ddf"
        )
        self._register_load_state_dict_pre_hook(_drop_sampling_grid)

    @property
    def size_multiple(self) -> int:
        return self.net.size_multiple

    def forward(self, batch: Batch) -> RegistrationOutput:
        """One Monte-Carlo sample of the registration."""
        x, shape = self._pair(batch)
        ddf = crop_to(self.reg_head(self.net(x)), shape)
        return self._output(batch, ddf)

    @torch.no_grad()
    def sample(self, batch: Batch, k: int = 25) -> RegistrationOutput:
        """The field and its uncertainty from ``k`` Monte-Carlo samples (official: 25).

        Used by ``regzoo register --samples K``. Runs without gradients and keeps two running
        moments (Welford) and, for ``min_mse``, the best sample so far, not the ``k`` fields.

        Returns:
            ``ddf`` ``(B, ndim, *S)``: with ``bayes_select="mean"`` the mean displacement; with
            ``"min_mse"`` per pair the sample whose warped image has the lowest mean squared
            difference to the fixed image (the first such sample on ties), its index in
            ``extras["selected_sample"]`` ``(B,)``; ``warped``: the moving image warped by
            ``ddf``; ``uncertainty``: per-voxel variance of the displacement over the samples,
            summed over its components (expected squared distance from the mean, voxels^2),
            ``(B, 1, *S)``; ``extras["appearance_uncertainty"]``: per-voxel variance of the
            warped images (the official "epistemic" map), ``(B, C, *S)``. Variances are unbiased.
        """
        if k < 2:
            raise ConfigError(f"an uncertainty map needs at least 2 Monte-Carlo samples, got {k}")
        ddf_mean = ddf_m2 = img_mean = img_m2 = best = None
        for i in range(1, k + 1):
            out = self(batch)
            mse = (out.warped - batch["fixed"]).pow(2).flatten(1).mean(1)
            if ddf_mean is None:
                ddf_mean, img_mean = out.ddf.clone(), out.warped.clone()
                ddf_m2, img_m2 = torch.zeros_like(out.ddf), torch.zeros_like(out.warped)
                best = {"mse": mse, "ddf": out.ddf, "warped": out.warped}
                best["index"] = torch.zeros_like(mse, dtype=torch.long)
                continue
            for value, mean, m2 in ((out.ddf, ddf_mean, ddf_m2), (out.warped, img_mean, img_m2)):
                delta = value - mean
                mean += delta / i
                m2 += delta * (value - mean)
            better = mse < best["mse"]
            best["index"] = torch.where(better, i - 1, best["index"])
            for key, value in (("mse", mse), ("ddf", out.ddf), ("warped", out.warped)):
                where = better.view(-1, *[1] * (value.dim() - 1))
                best[key] = torch.where(where, value, best[key])
        extras = {"appearance_uncertainty": img_m2 / (k - 1)}
        if self.bayes_select == "min_mse":
            ddf, warped = best["ddf"], best["warped"]
            extras["selected_sample"] = best["index"]
        else:
            ddf, warped = ddf_mean, warp(batch["moving"], ddf_mean)
        return RegistrationOutput(
            warped=warped,
            ddf=ddf,
            uncertainty=(ddf_m2 / (k - 1)).sum(dim=1, keepdim=True),
            extras=extras,
        )
