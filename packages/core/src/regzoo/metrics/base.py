"""What every registered metric shares: the keyword call, the inputs it needs, label maps.

A registered metric is a small object built from its config (``regzoo.build("metric", "hd95")``)
and called with keyword arguments::

    metric(ddf=, warped_label=, fixed_label=, spacing=, fixed_landmarks=, moving_landmarks=)

taking what it needs and ignoring the rest; it returns a float64 CPU tensor ``(B,)``, one value per
case (NaN where the case has nothing to measure, e.g. no label present). Its :meth:`Metric.aggregate`
turns the values of all cases into the one summary figure: their mean for most metrics, a
figure over the whole set for others (``success-auc``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..registry import Paper
from .summary import summarize

__all__ = ["Metric", "LEARN2REG_2023", "as_label_map", "spacing_of", "nanmean_rows"]

LEARN2REG_2023 = Paper(
    "A. Hering, L. Hansen, T. C. W. Mok, et al.",
    "Learn2Reg: Comprehensive Multi-Task Medical Image Registration Challenge, Dataset and "
    "Evaluation in the Era of Deep Learning",
    "IEEE Transactions on Medical Imaging 42(3):697-712",
    2023,
    "https://doi.org/10.1109/TMI.2022.3213983",
)


class Metric:
    """Base class of registered metrics.

    Subclasses set ``requires`` (the keyword inputs that must not be ``None``), ``unit`` and
    ``higher_is_better``, and implement :meth:`compute`.
    """

    requires: tuple[str, ...] = ()
    unit: str = ""
    higher_is_better: bool = True

    def __call__(self, **inputs: Any) -> torch.Tensor:
        """One value per case, ``(B,)`` float64 on the CPU; unknown keyword inputs are ignored."""
        missing = [k for k in self.requires if inputs.get(k) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} needs {', '.join(missing)}")
        return self.compute(**inputs).cpu()

    def compute(self, **inputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(self, values: Iterable[float]) -> float:
        """The summary figure of the per-case values: their mean over non-NaN cases."""
        return summarize(values)["mean"]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def as_label_map(labels: torch.Tensor) -> torch.Tensor:
    """An integer label map ``(B, 1, *spatial)`` from a label map or one-hot/probabilities.

    A tensor with one channel is taken as labels (rounded if floating); with K > 1 channels the
    arg-max over channels is returned.
    """
    if labels.dim() < 3:
        raise ValueError(
            f"labels must be (B, 1, *spatial) or (B, K, *spatial), got {tuple(labels.shape)}"
        )
    if labels.shape[1] > 1:
        return labels.argmax(1, keepdim=True)
    return labels.round().long() if labels.is_floating_point() else labels.long()


def spacing_of(spacing: torch.Tensor | None, batch: int, ndim: int) -> torch.Tensor:
    """Voxel spacing ``(B, ndim)`` float64 on the CPU; ``None`` means 1 mm on every axis."""
    if spacing is None:
        return torch.ones(batch, ndim, dtype=torch.float64)
    s = torch.as_tensor(spacing, dtype=torch.float64).detach().cpu()
    if s.dim() == 1:
        s = s.expand(batch, -1)
    if s.shape != (batch, ndim):
        raise ValueError(f"spacing must be (B, ndim) = ({batch}, {ndim}), got {tuple(s.shape)}")
    return s


def nanmean_rows(values: torch.Tensor) -> torch.Tensor:
    """Mean of each row over its finite entries; NaN for a row with none."""
    finite = torch.isfinite(values)
    count = finite.sum(1)
    total = torch.where(finite, values, 0.0).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan)
