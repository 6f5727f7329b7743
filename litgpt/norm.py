"""Normalisation layers: LayerNorm (torch's) and RMSNorm, chosen by `config.norm_class_name`."""

from __future__ import annotations

import torch
from torch import nn

from litgpt.config import Config


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (`weight * x / rms(x)`)."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = self._unit(x)
        return (unit * self.weight.to(unit.dtype)).to(x.dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x) without the gain, in x's dtype."""
        return self._unit(x).to(x.dtype)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def build_norm(config: Config, size: int) -> nn.Module:
    if config.norm_class_name == "RMSNorm":
        return RMSNorm(size, eps=config.norm_eps)
    return nn.LayerNorm(size, eps=config.norm_eps)
