"""Low-rank adapters (LoRA) for the convolutions of a prior's network.

A frozen convolution ``W`` becomes ``W x + (alpha / r) B(A(x))``: ``A`` a convolution with the
same kernel, stride and padding into ``r`` channels (random initialisation), ``B`` a 1 x 1
convolution back to the output channels, initialised to zero, so an adapter starts as the
identity change. Only ``A`` and ``B`` are trained (a few percent of the weights at rank 4);
:func:`merge_lora` folds them into plain convolutions (``W + (alpha / r) B A``, exact), so an
adapted network saves and loads like any other checkpoint.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["LoRAConv2d", "add_lora", "lora_parameters", "merge_lora"]


class LoRAConv2d(nn.Module):
    """``base(x) + scale * up(down(x))`` with ``base`` frozen."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None):
        super().__init__()
        if base.groups != 1:
            raise ValueError("LoRA adapters need ungrouped convolutions")
        self.base = base.requires_grad_(False)
        self.rank = int(rank)
        self.scale = float(alpha if alpha is not None else rank) / self.rank
        self.down = nn.Conv2d(base.in_channels, self.rank, base.kernel_size, base.stride,
                              base.padding, base.dilation, bias=False)
        self.up = nn.Conv2d(self.rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.to(device=base.weight.device, dtype=base.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (its dtype and device are the layer's)."""
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))

    def merged(self) -> nn.Conv2d:
        """A plain convolution with the adapter folded in."""
        conv = copy.deepcopy(self.base)
        with torch.no_grad():
            delta = torch.einsum("or,rikl->oikl", self.up.weight[:, :, 0, 0], self.down.weight)
            conv.weight += self.scale * delta
        return conv


def add_lora(module: nn.Module, rank: int, alpha: float | None = None,
             kernels: tuple[int, ...] = (3,)) -> nn.Module:
    """A copy of ``module`` whose convolutions with a ``k x k`` kernel (``k`` in ``kernels``:
    by default the 3 x 3 convolutions of the residual blocks, the input, the output and the
    resampling layers) carry adapters of ``rank``; every original weight is frozen."""
    out = copy.deepcopy(module).requires_grad_(False)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size[0] in kernels \
                    and child.groups == 1:
                setattr(parent, name, LoRAConv2d(child, rank, alpha))
    return out


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter weights of ``module``."""
    return [p for m in module.modules() if isinstance(m, LoRAConv2d)
            for p in (m.down.weight, m.up.weight)]


def merge_lora(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every adapter folded into its convolution."""
    out = copy.deepcopy(module)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRAConv2d):
                setattr(parent, name, child.merged())
    return out
