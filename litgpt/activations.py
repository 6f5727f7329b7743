"""The MLP activations by name, so the MLPs and the fused decode GEMV (`litgpt.kernels.linear`) share one table."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """h = [a | b] (..., 2 I) -> silu(a) * b (..., I)."""
    a, b = h.chunk(2, dim=-1)
    return F.silu(a) * b


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "swiglu": swiglu,
}
