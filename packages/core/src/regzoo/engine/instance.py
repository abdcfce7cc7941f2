"""Instance optimisation: refine a trained network on one pair at test time, without labels.

N Adam steps on the model's label-free :meth:`~regzoo.models.RegistrationModel.objective`, updating
only :meth:`~regzoo.models.RegistrationModel.io_parameters` (all weights for most models, the STN
for ISTN). This is what uniGradICON calls IO; the caller's model is left untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UserError
from ..models import RegistrationModel, RegistrationOutput

__all__ = ["instance_optimise"]


def instance_optimise(
    model: RegistrationModel,
    batch: Mapping[str, Any],
    iterations: int,
    lr: float | None = None,
) -> tuple[RegistrationOutput, list[float]]:
    """Optimise a copy of ``model`` on ``batch`` for ``iterations`` steps.

    Args:
        model: a trained model (not modified).
        batch: one pair (or a batch of pairs); labels in it are never used for the updates.
        iterations: Adam steps (0: plain inference).
        lr: learning rate; ``model.io_lr`` by default.

    Raises:
        UserError: ``iterations`` > 0 for a model without weights to optimise.

    Returns:
        The refined model's output on ``batch`` (labels included, so ``warped_label`` is there
        when the batch has them) and the objective before each step plus the final value.
    """
    if iterations <= 0:
        with torch.no_grad():
            return model.eval()(batch), []
    tuned = copy.deepcopy(model).eval()
    params = list(tuned.io_parameters())
    if not params:
        raise UserError(
            f"{type(model).__name__} has no weights to instance-optimise: drop --iterations "
            "(a classical method optimises each pair itself, see its model settings)"
        )
    tuned.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr if lr is not None else model.io_lr)
    inputs = tuned.test_inputs(batch)  # the objective itself never sees labels
    history = []
    for _ in range(int(iterations)):
        loss = tuned.objective(inputs, tuned(inputs))
        history.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = tuned(batch)
        history.append(float(tuned.objective(inputs, tuned(inputs))))
    return out, history
