"""Parameters and multiply-adds (MACs, the paper's "FLOPs") of a model at an input size.

Only convolutions and linear layers are counted, one MAC per multiply-add, as in the MobileNet
papers and the XSepConv paper's formulas; BN, activations, pooling and additions are not.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .fused import plain_ops

__all__ = ['ModelCost', 'count_cost']


@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int
    layer_macs: dict[str, int]  # per conv / linear layer, by module name, in forward order

    def macs_of(self, prefix: str) -> int:
        """MACs of the layers inside the module named `prefix` (e.g. 'blocks.2.1.conv_dw')."""
        return sum(m for name, m in self.layer_macs.items() if name == prefix or name.startswith(prefix + '.'))


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    per_sample = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_sample * (module.in_channels // module.groups) * kh * kw
    return per_sample * module.in_features


@torch.no_grad()
def count_cost(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> ModelCost:
    """Count params and MACs for one image of `input_size` (C, H, W); defaults to the model's pretrained_cfg.

    A reparameterized XSepConv runs its plain convs here, so that they are seen, not the fused op.
    """
    if input_size is None:
        input_size = model.pretrained_cfg['input_size']
    layer_macs: dict[str, int] = {}

    def hook(name):
        return lambda module, inputs, output: layer_macs.__setitem__(name, _layer_macs(module, output))

    handles = [
        m.register_forward_hook(hook(name)) for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with plain_ops(model):
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(params=params, macs=sum(layer_macs.values()), layer_macs=layer_macs)
