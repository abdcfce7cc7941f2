"""An exponential moving average of a network's weights: the teacher of teacher-student methods
(mean teacher, JRSS's self-training), updated after each step of its student."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_update"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student``, parameter by parameter; buffers
    (e.g. BatchNorm statistics) are copied from the student.

    The two modules must have the same architecture (``copy.deepcopy(student)`` makes a teacher).

    Raises:
        ValueError: ``decay`` outside [0, 1], or modules whose parameters differ in name or shape.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema decay must be in [0, 1], got {decay}")
    ours, theirs = dict(teacher.named_parameters()), dict(student.named_parameters())
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise ValueError("ema_update: the teacher and the student differ in their parameters")
    for name, param in ours.items():
        param.lerp_(theirs[name].detach(), 1.0 - decay)
    student_buffers = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        buffer.copy_(student_buffers[name])
