"""DiffuseMorph: registration with a denoising diffusion model, and the trajectory it gives.

Kim, Han, Ye, "DiffuseMorph: Unsupervised Deformable Image Registration Using Diffusion Model",
ECCV 2022 (doi:10.1007/978-3-031-19821-2_20); the authors' code is ``DiffuseMorph/DiffuseMorph``.

Both images are scaled to [-1, 1] (min-max per image, as the authors' data loaders do). The
diffusion network (:class:`~regzoo_diffusemorph.networks.DiffusionUNet`) sees
``concat(m, f, x_t)`` and the step ``t`` and estimates the latent ``eps_hat``; the deformation
network sees ``concat(m, eps_hat)`` and returns the displacement ``u``, which warps the moving
image mapped back to [0, 1] (``(m + 1) / 2``).

- Training draws ``t`` uniformly in ``0 .. T-1`` per pair and ``x_t = q(f, t)``; the loss is
  ``||eps - eps_hat||^2 + lambda (-LNCC_9((m+1)/2 o u, (f+1)/2) + Grad_l2(u))``.
- Inference is one pass at ``t = 0`` with ``x_t = f``.
- ``identity_anchor`` (0, the authors' training, by default) adds ``w * mean |G(m, 0)|^2``: the
  deformation network given a zero latent is pulled to the identity, so that the trajectory starts
  at the moving image (trained without it, the network predicts a field from ``m`` alone).
- :meth:`DiffuseMorph.trajectory` evaluates the deformation network on ``concat(m, gamma
  eps_hat)`` for ``gamma`` in ``linspace(0, 1, steps)`` (the authors' sampling loop, 7 steps);
  ``gamma = 1`` is the registration.

The warp is regzoo's (bilinear, ``align_corners`` voxel convention, channel i along axis i, as the
authors' warp); outside the image it samples zeros (their 3D warp) or the border (their 2D one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo.errors import ConfigError
from regzoo.models import Batch, RegistrationLoss, RegistrationModel, RegistrationOutput
from regzoo.spatial import warp

from . import DiffuseMorphConfig
from .networks import DeformationNet, DiffusionUNet, LinearSchedule

__all__ = ["DiffuseMorph", "scale_intensities"]

_DEFAULTS = DiffuseMorphConfig()
# names of the authors' schedule buffers, recomputed here from the config
_OFFICIAL_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def scale_intensities(image: torch.Tensor) -> torch.Tensor:
    """Each image of ``(B, C, *S)`` min-max scaled to [-1, 1] (over its channels and voxels)."""
    flat = image.flatten(1)
    shape = (-1,) + (1,) * (image.dim() - 1)
    lo = flat.min(1).values.reshape(shape)
    hi = flat.max(1).values.reshape(shape)
    return (image - lo) / (hi - lo).clamp_min(1e-8) * 2.0 - 1.0


class DiffuseMorph(RegistrationModel):
    """DiffuseMorph (Kim, Han, Ye, ECCV 2022).

    Args:
        ndim: spatial dimensions (2 or 3).
        in_channels: channels of each image.
        inner_channel, channel_multiplier, attn_res, res_blocks, dropout, image_size,
            norm_groups, attn_heads, attention: the diffusion U-Net
            (:class:`~regzoo_diffusemorph.networks.DiffusionUNet`).
        encoder_nc, decoder_nc, convs_per_block: the deformation network
            (:class:`~regzoo_diffusemorph.networks.DeformationNet`); the last decoder width is
            the field's channels, so it is taken as ``ndim`` whatever the config says.
        n_timestep, linear_start, linear_end: the linear beta schedule (T = 2000, 1e-6 to 1e-2).
        loss_lambda: weight of the registration terms against the noise term (3D 20, 2D 2).
        similarity, regularizer: registered loss configs of the registration terms (LNCC window
            9, Grad l2); ``None`` leaves a term out.
        padding: ``"zeros"`` or ``"border"``: what the warp samples outside the image.
        identity_anchor: weight of ``mean |G(m, 0)|^2`` (squared voxels), the deformation
            network's field for a zero latent; 0 (the authors') leaves the term out.
        trajectory_steps: states of :meth:`trajectory` when no number is asked (7).
        num_labels: classes of ``warped_label``; ``None``: the data's label table.

    The defaults are ``diffusemorph``'s (:class:`regzoo_diffusemorph.DiffuseMorphConfig`).
    """

    def __init__(
        self,
        ndim: int = _DEFAULTS.ndim,
        in_channels: int = _DEFAULTS.in_channels,
        inner_channel: int = _DEFAULTS.inner_channel,
        channel_multiplier: Sequence[int] = _DEFAULTS.channel_multiplier,
        attn_res: Sequence[int] = _DEFAULTS.attn_res,
        res_blocks: int = _DEFAULTS.res_blocks,
        dropout: float = _DEFAULTS.dropout,
        image_size: int = _DEFAULTS.image_size,
        norm_groups: int = _DEFAULTS.norm_groups,
        attn_heads: int = _DEFAULTS.attn_heads,
        attention: str = _DEFAULTS.attention,
        encoder_nc: Sequence[int] = _DEFAULTS.encoder_nc,
        decoder_nc: Sequence[int] = _DEFAULTS.decoder_nc,
        convs_per_block: int = _DEFAULTS.convs_per_block,
        n_timestep: int = _DEFAULTS.n_timestep,
        linear_start: float = _DEFAULTS.linear_start,
        linear_end: float = _DEFAULTS.linear_end,
        loss_lambda: float = _DEFAULTS.loss_lambda,
        similarity: Mapping[str, Any] | None = _DEFAULTS.similarity,
        regularizer: Mapping[str, Any] | None = _DEFAULTS.regularizer,
        padding: str = _DEFAULTS.padding,
        identity_anchor: float = _DEFAULTS.identity_anchor,
        trajectory_steps: int = _DEFAULTS.trajectory_steps,
        num_labels: int | None = _DEFAULTS.num_labels,
    ) -> None:
        super().__init__()
        if padding not in ("zeros", "border"):
            raise ConfigError(f"diffusemorph: padding must be 'zeros' or 'border', got {padding!r}")
        if identity_anchor < 0:
            raise ConfigError(
                f"diffusemorph: identity_anchor must be non-negative, got {identity_anchor}"
            )
        if trajectory_steps < 1:
            raise ConfigError(
                f"diffusemorph: trajectory_steps must be at least 1, got {trajectory_steps}"
            )
        decoder_nc = list(decoder_nc)
        if decoder_nc:
            decoder_nc[-1] = ndim
        try:
            self.denoise_fn = DiffusionUNet(
                ndim,
                3 * in_channels,
                in_channels,
                inner_channel,
                channel_multiplier,
                attn_res,
                res_blocks,
                dropout,
                image_size,
                norm_groups,
                attn_heads,
                attention,
            )
            self.field_fn = DeformationNet(
                ndim, 2 * in_channels, encoder_nc, decoder_nc, convs_per_block
            )
            self.schedule = LinearSchedule(n_timestep, linear_start, linear_end)
        except ValueError as err:
            raise ConfigError(f"diffusemorph: {err}") from err
        self.ndim = ndim
        self.loss_lambda = float(loss_lambda)
        self.padding = padding
        self.identity_anchor = float(identity_anchor)
        self.trajectory_steps = int(trajectory_steps)
        self.num_labels = num_labels
        self.registration = RegistrationLoss(
            similarity=dict(similarity) if similarity else None,
            regularizer=dict(regularizer) if regularizer else None,
        )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """The authors' initialisation: orthogonal weights in the diffusion network, N(0, 0.02)
        in the deformation network (convolutions, transposed ones and linear layers), zero biases;
        GroupNorm keeps PyTorch's."""
        for net, init in ((self.denoise_fn, nn.init.orthogonal_), (self.field_fn, None)):
            for module in net.modules():
                if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                    if init is None:
                        nn.init.normal_(module.weight, 0.0, 0.02)
                    else:
                        init(module.weight)
                    if module.bias is not None:
                        module.bias.zero_()

    def _latent(
        self, moving: torch.Tensor, fixed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(eps_hat, eps)`` for scaled images: at a random step with ``x_t = q(f, t)`` in
        training (``eps`` the drawn noise), at ``t = 0`` with ``x_t = f`` otherwise (``None``)."""
        b = fixed.shape[0]
        if self.training:
            t = torch.randint(0, self.schedule.num_timesteps, (b,), device=fixed.device)
            noise = torch.randn_like(fixed)
            x_t = self.schedule.q_sample(fixed, t, noise)
        else:
            t = torch.zeros(b, dtype=torch.long, device=fixed.device)
            noise, x_t = None, fixed
        return self.denoise_fn(torch.cat([moving, fixed, x_t], dim=1), t), noise

    def forward(self, batch: Batch) -> RegistrationOutput:
        """``moving``, ``fixed`` ``(B, C, *S)`` to the output: ``ddf`` ``(B, ndim, *S)`` voxels,
        ``warped`` (the moving image in its own intensities), ``warped_label`` with labels, and
        ``extras``: ``latent`` (``eps_hat``, ``(B, C, *S)``), ``warped_scaled`` (the moving image
        scaled to [0, 1] and warped, what the loss compares) and in training ``noise`` (``eps``)
        and, with ``identity_anchor``, ``anchor_ddf`` (the field for a zero latent).
        """
        moving, fixed = batch["moving"], batch["fixed"]
        m = scale_intensities(moving)
        latent, noise = self._latent(m, scale_intensities(fixed))
        ddf = self.field_fn(torch.cat([m, latent], dim=1))
        extras = {"latent": latent, "warped_scaled": warp((m + 1) / 2, ddf, padding=self.padding)}
        if noise is not None:
            extras["noise"] = noise
            if self.identity_anchor > 0:
                anchor = torch.cat([m, torch.zeros_like(latent)], dim=1)
                extras["anchor_ddf"] = self.field_fn(anchor)
        return RegistrationOutput(
            warped=warp(moving, ddf, padding=self.padding),
            ddf=ddf,
            warped_label=self.warp_moving_labels(batch, ddf, self.num_labels),
            extras=extras,
        )

    def loss(self, batch: Batch, out: RegistrationOutput) -> dict[str, torch.Tensor]:
        """The authors' objective: ``noise`` (MSE of ``eps_hat`` to ``eps``, when the output was
        computed in training), ``similarity`` (LNCC of the scaled warped moving image and
        ``(f + 1) / 2``) and ``regularizer`` (Grad l2 of ``ddf``), the last two times
        ``loss_lambda``, and with ``identity_anchor`` ``anchor`` (mean squared norm of the
        zero-latent field, times the weight in the total); ``"loss"`` is the total."""
        fixed = (scale_intensities(batch["fixed"]) + 1) / 2
        scaled = RegistrationOutput(warped=out.extras["warped_scaled"], ddf=out.ddf)
        terms = self.registration({"fixed": fixed}, scaled)
        total = self.loss_lambda * terms["loss"]
        if "noise" in out.extras:
            terms["noise"] = F.mse_loss(out.extras["latent"], out.extras["noise"])
            total = total + terms["noise"]
        if "anchor_ddf" in out.extras:
            terms["anchor"] = out.extras["anchor_ddf"].pow(2).sum(1).mean()
            total = total + self.identity_anchor * terms["anchor"]
        terms["loss"] = total
        return terms

    def trajectory(self, batch: Batch, steps: int | None = None) -> list[torch.Tensor]:
        """The continuous deformation of the paper: the latent of one pass at ``t = 0``, scaled by
        ``gamma`` in ``linspace(0, 1, steps)`` (``steps`` default ``trajectory_steps``, 7), each
        through the deformation network: ``steps`` fields ``(B, ndim, *S)`` in voxels, the last
        (``gamma = 1``) the registration's ``ddf``."""
        steps = self.trajectory_steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"trajectory steps must be at least 1, got {steps}")
        m = scale_intensities(batch["moving"])
        was_training = self.training
        self.eval()
        try:
            latent, _ = self._latent(m, scale_intensities(batch["fixed"]))
            gammas = torch.linspace(0.0, 1.0, steps).tolist() if steps > 1 else [1.0]
            return [self.field_fn(torch.cat([m, gamma * latent], dim=1)) for gamma in gammas]
        finally:
            self.train(was_training)

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a regzoo or an authors' state dict (``denoise_fn.*``, ``field_fn.*``), strictly;
        the authors' schedule buffers and their warp's (parameter-free) entries are dropped, since
        the config defines the schedule."""
        state = {
            k: v
            for k, v in state.items()
            if k not in _OFFICIAL_BUFFERS and not k.startswith(("loss_", "field_fn.stn."))
        }
        self.load_state_dict(state, strict=True)
