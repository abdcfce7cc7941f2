"""Synthetic multi-modality pairs with one contrast per modality (JSSR's set-up, METHODS.md J30).

JSSR registers scans of two *modalities* (CT phases in the paper): every moving image is in the
source modality, every fixed image in the target modality, and the segmentor is supervised in the
target modality only. Core's ``synth`` dataset offers one contrast for all images
(``multimodal=False``) or a new contrast for every scan (``multimodal=True``, SynthMorph's
training data), where no image belongs to a modality. ``synth-two-contrast`` is ``synth`` with
``multimodal=True`` meaning "one contrast per role": all moving scans share one random contrast
(label means, stds and gamma) and all fixed scans another, each scan keeping its own noise, bias
field and warps. With ``multimodal=False`` it is ``synth`` unchanged.
"""

from __future__ import annotations

from regzoo import register_dataset
from regzoo.data.datasets import SYNTHMORPH_2022, SynthDataset

__all__ = ["TwoContrastSynth", "MOVING_CONTRAST", "FIXED_CONTRAST"]

# Contrast keys of the two modalities; core's single-contrast data uses key (0,).
MOVING_CONTRAST = (1,)
FIXED_CONTRAST = (2,)


@register_dataset(
    "synth-two-contrast",
    summary="synth with one contrast per modality: moving scans in one, fixed scans in another.",
    paper=SYNTHMORPH_2022,
    tags=("2d", "3d", "synthetic", "multimodal", "labels"),
)
class TwoContrastSynth(SynthDataset):
    """:class:`~regzoo.data.SynthDataset` whose ``multimodal`` pairs have one contrast per role.

    Arguments are those of ``synth``; with ``multimodal=True`` the moving images are all in one
    contrast and the fixed images all in another (the population's ``seed`` draws both).
    """

    def contrast_key(self, key: tuple[int, ...], moving: bool) -> tuple[int, ...]:
        """One contrast per role when ``multimodal``: moving scans share one, fixed scans another."""
        if not self.multimodal:
            return super().contrast_key(key, moving)
        return MOVING_CONTRAST if moving else FIXED_CONTRAST
