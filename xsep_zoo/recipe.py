"""The choices of a training recipe beyond optimizer settings: how the model starts, what weight decay reaches.

The paper's recipe keeps timm's initialisation and decays every parameter. The other choices are
the usual remedies for an unstable start or for BatchNorm scales decayed to zero over a long run;
each is a config value of scripts/train.py, so a run records which it used.
"""
import torch
import torch.nn as nn
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

from ._checks import check_choice

__all__ = ['HEAD_INITS', 'NORMAL_HEAD_STD', 'PAPER_CHOICES', 'RECIPES', 'init_classifier', 'param_groups',
           'recipe_name', 'zero_init_last_bn']

# The paper's values of the choices below: what runs recorded before the choices existed trained with.
PAPER_CHOICES = dict(head_init='timm', zero_init_last=False, norm_bias_decay=True)
# Named recipes: what each changes from the paper's (scripts/train.py --recipe; docs/recipes.md says why).
RECIPES = {
    'paper': {},
    'zero-init-last': dict(zero_init_last=True),
}

# 'timm': timm's uniform +-1/sqrt(fan_out); 'normal': the first author's MobileNetV3 code, N(0, 0.001), zero bias
HEAD_INITS = ('timm', 'normal')
NORMAL_HEAD_STD = 0.001


def recipe_name(config: dict) -> str:
    """The named recipe whose choices a run's configuration has (missing ones are the paper's); otherwise its
    choices that differ from the paper's, as key=value."""
    values = {k: config.get(k, v) for k, v in PAPER_CHOICES.items()}
    for name, changes in RECIPES.items():
        if values == {**PAPER_CHOICES, **changes}:
            return name
    return ' '.join(f'{k}={v}' for k, v in values.items() if v != PAPER_CHOICES[k])


@torch.no_grad()
def init_classifier(model: nn.Module, head_init: str, seed: int) -> None:
    """Initialise the classifier as `head_init` says ('timm': leave it), from its own generator.

    The global random stream is not touched, so the rest of a run (dropout masks) is drawn as with timm's init.
    """
    check_choice('classifier init', head_init, HEAD_INITS)
    if head_init == 'timm':
        return
    classifier = model.get_classifier()
    generator = torch.Generator(device=classifier.weight.device).manual_seed(seed)
    classifier.weight.normal_(0.0, NORMAL_HEAD_STD, generator=generator)
    if classifier.bias is not None:
        classifier.bias.zero_()


@torch.no_grad()
def zero_init_last_bn(model: nn.Module) -> int:
    """Zero the scale of the last BatchNorm of every residual block, so each starts as the identity.

    Returns how many blocks it changed; a model without timm's residual blocks is an error, not a no-op.
    """
    blocks = [m for m in model.modules() if isinstance(m, (InvertedResidual, DepthwiseSeparableConv)) and m.has_skip]
    if not blocks:
        raise ValueError(f'{type(model).__name__} has no residual InvertedResidual or DepthwiseSeparableConv block '
                         'whose last BatchNorm could start at zero')
    for block in blocks:
        last = block.bn3 if isinstance(block, InvertedResidual) else block.bn2
        last.weight.zero_()
    return len(blocks)


def param_groups(model: nn.Module, weight_decay: float, norm_bias_decay: bool) -> list[dict]:
    """Optimizer parameter groups: without `norm_bias_decay`, BatchNorm parameters and biases (every tensor
    of one dimension) get no weight decay."""
    if norm_bias_decay:
        return [dict(params=list(model.parameters()), weight_decay=weight_decay)]
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
