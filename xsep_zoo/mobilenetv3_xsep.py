"""MobileNetV3-Small with XSepConv, on timm's MobileNetV3.

Paper: `XSepConv: Extremely Separated Convolution` - https://arxiv.org/abs/2002.12046
Base: `Searching for MobileNetV3` - https://arxiv.org/abs/1905.02244

Every model here is timm's MobileNetV3-Small (same arch_def, same class) in which a few chosen
depthwise convs are swapped: for XSepConv, or for a larger depthwise conv. timm's block builder
has a closed set of block types, so the swap happens on the built network, by block position,
before any weights are loaded. By default the network is adapted to small inputs (CIFAR, SVHN,
Tiny-ImageNet) as the paper's first author did: stem conv and first block at stride 1, total
stride 8, so 32x32 ends on a 4x4 map. `small_input=False` restores the ImageNet strides (32).
"""
import re
from dataclasses import dataclass
from functools import partial
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn
from timm.layers import create_conv2d
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite
from timm.models._efficientnet_builder import (
    decode_arch_def, efficientnet_init_weights, resolve_act_layer, resolve_bn_args, round_channels,
)
from timm.models.mobilenetv3 import MobileNetV3
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ._checks import check_choice
from .constants import HUB_ORG
from .hub import WeightsError, pretrained_weights_overlay
from .pretrained import DATASET_CFGS, PUBLISHED, UNTRAINED_TAG, Record, check_weights_request, ranked_tags
from .xsepconv import XSEP_VARIANTS, PaddedConv2x2, XSepConv, padding_plan

__all__ = ['XSepMobileNetV3', 'XSepInvertedResidual', 'ARCH_VARIANTS', 'FamilyModel', 'MODELS', 'MODEL_NAMES']

Slot = tuple[int, int]  # (stage, block) in model.blocks

# The 5x5 depthwise convs of MobileNetV3-Small that the paper touches.
MID = ((2, 1), (2, 2), (3, 0), (3, 1))  # stride 1, middle stages
LAST = ((4, 1), (4, 2))  # stride 1, last stage
DOWN = ((2, 0),)  # the first stride-2 one

# What each variant puts in those slots: 'dw<k>' a k x k depthwise conv, 'xsep<k>' an XSepConv.
# Every other depthwise conv is timm's. Each DW / XSepConv pair differs only in the slots under study.
ARCH_VARIANTS: dict[str, dict] = {
    'dw': dict(),
    'xsep': dict(ops={MID: 'xsep5', LAST: 'xsep3'}),
    'dw_k7': dict(ops={MID: 'dw7'}),
    'xsep_k7': dict(ops={MID: 'xsep7'}),
    'dw_ds7': dict(ops={DOWN: 'dw7'}),
    'xsep_ds7': dict(ops={DOWN: 'xsep7'}),
    'xsep_no2x2': dict(ops={MID: 'xsep5', LAST: 'xsep3'}, xsep_variant='no2x2'),
    'xsep_b': dict(ops={MID: 'xsep5', LAST: 'xsep3'}, xsep_variant='behind'),
    'xsep_p': dict(ops={MID: 'xsep5', LAST: 'xsep3'}, xsep_variant='parallel'),
    'xsep_sympad': dict(ops={MID: 'xsep5', LAST: 'xsep3'}, padding='symmetric'),
    'xsep_asympad': dict(ops={MID: 'xsep5', LAST: 'xsep3'}, padding='right_bottom'),
}


@dataclass(frozen=True)
class FamilyModel:
    """One registered model: an arch variant at a width, what it tests, and what it is compared with."""
    arch: str  # a key of ARCH_VARIANTS
    multiplier: float  # MobileNetV3-Small's width multiplier
    description: str  # what it tests, one sentence
    paper: str  # where the paper reports it
    dw_partner: Optional[str] = None  # the DW baseline an XSepConv model is compared with; None for a baseline


# The family: every registered name (the entrypoints below look themselves up here), for the registry, the
# README and the scripts. Fig. 3 compares the four widths; Table 1 is width 1.0. Ablations compare with DW 1.0.
MODELS: dict[str, FamilyModel] = {
    'mobilenetv3_small_dw_050': FamilyModel(
        'dw', 0.5, 'Baseline: MobileNetV3-Small 0.5 with its depthwise convs.', 'Fig. 3 (DWConv, width 0.5)'),
    'mobilenetv3_small_dw_075': FamilyModel(
        'dw', 0.75, 'Baseline: MobileNetV3-Small 0.75 with its depthwise convs.', 'Fig. 3 (DWConv, width 0.75)'),
    'mobilenetv3_small_dw_100': FamilyModel(
        'dw', 1.0, 'Baseline: MobileNetV3-Small 1.0 with its depthwise convs.', 'Table 1, Fig. 3 (DWConv)'),
    'mobilenetv3_small_dw_125': FamilyModel(
        'dw', 1.25, 'Baseline: MobileNetV3-Small 1.25 with its depthwise convs.', 'Fig. 3 (DWConv, width 1.25)'),
    'mobilenetv3_small_xsep_050': FamilyModel(
        'xsep', 0.5, "The paper's model at width 0.5: XSepConv k=5 in the middle stages, k=3 in the last.",
        'Fig. 3 (XSepConv, width 0.5)', 'mobilenetv3_small_dw_050'),
    'mobilenetv3_small_xsep_075': FamilyModel(
        'xsep', 0.75, "The paper's model at width 0.75: XSepConv k=5 in the middle stages, k=3 in the last.",
        'Fig. 3 (XSepConv, width 0.75)', 'mobilenetv3_small_dw_075'),
    'mobilenetv3_small_xsep_100': FamilyModel(
        'xsep', 1.0, "The paper's model: XSepConv k=5 in the middle stages, k=3 in the last.",
        'Table 1, Fig. 3 (XSepConv)', 'mobilenetv3_small_dw_100'),
    'mobilenetv3_small_xsep_125': FamilyModel(
        'xsep', 1.25, "The paper's model at width 1.25: XSepConv k=5 in the middle stages, k=3 in the last.",
        'Fig. 3 (XSepConv, width 1.25)', 'mobilenetv3_small_dw_125'),
    'mobilenetv3_small_dw_k7_100': FamilyModel(
        'dw_k7', 1.0, "Larger kernels, baseline: the middle stages' stride-1 depthwise convs at 7x7.",
        'Fig. 5 (DWConv 7x7)'),
    'mobilenetv3_small_xsep_k7_100': FamilyModel(
        'xsep_k7', 1.0, "Larger kernels: the middle stages' stride-1 depthwise convs as XSepConv k=7.",
        'Fig. 5 (XSepConv k=7)', 'mobilenetv3_small_dw_k7_100'),
    'mobilenetv3_small_dw_ds7_100': FamilyModel(
        'dw_ds7', 1.0, 'Downsampling, baseline: the first stride-2 depthwise conv at 7x7.',
        'Fig. 4 (DWConv 7x7 downsampling)'),
    'mobilenetv3_small_xsep_ds7_100': FamilyModel(
        'xsep_ds7', 1.0, 'Downsampling: the first stride-2 depthwise conv as downsampling XSepConv k=7.',
        'Fig. 4 (downsampling XSepConv)', 'mobilenetv3_small_dw_ds7_100'),
    'mobilenetv3_small_xsep_no2x2_100': FamilyModel(
        'xsep_no2x2', 1.0, 'Ablation: XSepConv without its 2x2 depthwise conv.',
        'Table 2, Fig. 7 (w/o 2x2 DW)', 'mobilenetv3_small_dw_100'),
    'mobilenetv3_small_xsep_b_100': FamilyModel(
        'xsep_b', 1.0, 'Ablation: XSepConv-B, the 2x2 depthwise conv behind the separated convs.',
        'Table 3, Fig. 7 (XSepConv-B)', 'mobilenetv3_small_dw_100'),
    'mobilenetv3_small_xsep_p_100': FamilyModel(
        'xsep_p', 1.0, 'Ablation: XSepConv-P, the 2x2 depthwise conv in parallel to the separated convs.',
        'Table 3, Fig. 7 (XSepConv-P)', 'mobilenetv3_small_dw_100'),
    'mobilenetv3_small_xsep_sympad_100': FamilyModel(
        'xsep_sympad', 1.0, "Padding ablation: Wu et al.'s grouped symmetric padding on every 2x2 layer.",
        'Table 3 (Original-Padding)', 'mobilenetv3_small_dw_100'),
    'mobilenetv3_small_xsep_asympad_100': FamilyModel(
        'xsep_asympad', 1.0, 'Padding ablation: plain right-bottom padding on every 2x2 layer.',
        'not in the paper (one-sided padding)', 'mobilenetv3_small_dw_100'),
}
MODEL_NAMES = tuple(MODELS)  # kept for callers of earlier versions


def _arch_def(first_stride: int) -> list[list[str]]:
    """timm's MobileNetV3-Small arch_def; only the first block's stride is a parameter."""
    return [
        [f'ds_r1_k3_s{first_stride}_e1_c16_se0.25_nre'],  # relu
        ['ir_r1_k3_s2_e4.5_c24_nre', 'ir_r1_k3_s1_e3.67_c24_nre'],  # relu
        ['ir_r1_k5_s2_e4_c40_se0.25', 'ir_r2_k5_s1_e6_c40_se0.25'],  # hard-swish
        ['ir_r2_k5_s1_e3_c48_se0.25'],  # hard-swish
        ['ir_r3_k5_s2_e6_c96_se0.25'],  # hard-swish
        ['cn_r1_k1_s1_c576'],  # hard-swish
    ]


def _parse_op(op: str) -> tuple[str, int]:
    match = re.fullmatch(r'(dw|xsep)(\d+)', op) if isinstance(op, str) else None
    if match is None:
        raise ValueError(f"unknown depthwise op {op!r}; allowed: 'dw<k>' or 'xsep<k>' with k odd and >= 3")
    kind, k = match[1], int(match[2])
    if k < 3 or k % 2 == 0:
        raise ValueError(f'depthwise op {op!r}: kernel size must be odd and >= 3, got {k}')
    return kind, k


class XSepInvertedResidual(InvertedResidual):
    """timm's InvertedResidual whose conv_dw is an XSepConv: for inference it folds `bn2` into the XSepConv.

    timm's `reparameterize_model` calls a block's `reparameterize()` before its children's: the XSepConv takes in
    the BatchNorm + activation after it, so the fused CPU op runs both in one pass, and `bn2` becomes an identity.
    Same attributes, weights and forward as timm's block otherwise.
    """

    def reparameterize(self) -> None:
        if isinstance(self.conv_dw, XSepConv) and isinstance(self.bn2, nn.BatchNorm2d):
            self.conv_dw.reparameterize(self.bn2)
            self.bn2 = nn.Identity()


class XSepMobileNetV3(MobileNetV3):
    """timm's MobileNetV3 with chosen depthwise convs swapped and a network-wide 2x2 padding plan.

    Args beyond MobileNetV3's:
        ops: maps (stage, block) slots, or tuples of slots, to 'dw<k>' or 'xsep<k>'.
        xsep_variant: structure of every XSepConv ('standard', 'no2x2', 'behind', 'parallel').
        padding: 2x2 padding strategy: 'improved' (the paper's), or one mode for every layer.
        small_input: stem and first block at stride 1 (total stride 8) instead of ImageNet's 32.
    The resulting per-layer padding is kept in `padding_plan`, a list of (module name, mode).
    """

    def __init__(
            self,
            block_args,
            ops: Optional[Mapping[Union[Slot, tuple[Slot, ...]], str]] = None,
            xsep_variant: str = 'standard',
            padding: str = 'improved',
            small_input: bool = True,
            **kwargs,
    ):
        super().__init__(block_args, **kwargs)
        check_choice('xsep_variant', xsep_variant, XSEP_VARIANTS)
        if small_input:
            # The builder assumed a stride-2 stem; a stride-1 stem halves every reduction it recorded.
            self.conv_stem.stride = (1, 1)
            for info in self.feature_info:
                info['reduction'] //= 2
        for slots, op in (ops or {}).items():
            for slot in (slots if isinstance(slots[0], tuple) else (slots,)):
                self._swap_depthwise(slot, op, xsep_variant)

        layers = [(n, m) for n, m in self.named_modules() if isinstance(m, PaddedConv2x2)]
        modes = padding_plan(padding, len(layers))
        for (_, layer), mode in zip(layers, modes):
            layer.pad_mode = mode
        self.padding_plan = [(name, mode) for (name, _), mode in zip(layers, modes)]
        self.total_stride = self.feature_info[-1]['reduction']

    def _swap_depthwise(self, slot: Slot, op: str, xsep_variant: str) -> None:
        stage, index = slot
        if not (0 <= stage < len(self.blocks) and 0 <= index < len(self.blocks[stage])):
            raise ValueError(f'no block at slot {slot}; this network has stages of {[len(s) for s in self.blocks]}')
        block = self.blocks[stage][index]
        old = getattr(block, 'conv_dw', None)
        if not isinstance(old, nn.Conv2d) or old.groups != old.in_channels:
            raise ValueError(f'block at slot {slot} ({type(block).__name__}) has no depthwise conv to replace')
        kind, k = _parse_op(op)
        channels, stride = old.in_channels, old.stride[0]
        if kind == 'dw':
            new = create_conv2d(channels, channels, k, stride=stride, depthwise=True)
        else:
            # the internal nonlinearities are the block's own (hard-swish in every slot the paper uses)
            new = XSepConv(channels, k, stride, variant=xsep_variant, act_layer=type(block.bn2.act))
            if type(block) is InvertedResidual:
                block.__class__ = XSepInvertedResidual  # a subclass adding only reparameterize(): same state
        efficientnet_init_weights(new)
        block.conv_dw = new

    def _check_input(self, x: torch.Tensor) -> None:
        """Clear errors for bad inputs, in eager mode only.

        Scripted and traced graphs carry no Python checks, and FX cannot branch on a traced shape.
        """
        if torch.jit.is_scripting():
            return  # TorchScript compiles no further than here
        if torch.jit.is_tracing() or is_fx_symbolic_tracing():
            return
        if x.ndim != 4:
            raise ValueError(f'expected a 4D input (batch, channels, height, width), got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f'expected {self.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})')
        if min(x.shape[-2:]) < self.total_stride:
            raise ValueError(
                f'input {x.shape[-2]}x{x.shape[-1]} is too small: this network has total stride '
                f'{self.total_stride}, so height and width must be at least {self.total_stride}')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # MobileNetV3.forward_features, restated because TorchScript cannot call super()
        self._check_input(x)
        x = self.bn1(self.conv_stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x, flatten=True)
        return self.blocks(x)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        self._check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)


def _create_mnv3_small(variant: str, pretrained: bool = False, **kwargs):
    """Build one family member: timm's MobileNetV3-Small kwargs, the arch variant's swaps, then weights."""
    model_def = MODELS[variant]
    small_input = kwargs.pop('small_input', True)
    requested = kwargs.get('pretrained_cfg')  # a tag ('name.tag'), a cfg of the caller's, or None for the default
    if isinstance(requested, str) or (pretrained and requested is None and not kwargs.get('pretrained_cfg_overlay')):
        # an unknown tag, or weights that were never published: say what is, before anything is downloaded
        check_weights_request(variant, requested, pretrained)
    if pretrained and not kwargs.get('pretrained_cfg_overlay'):
        # the zoo's weights come from its local Hub folders or the Hub, checked against their sha256
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=requested).to_dict()
        overlay = pretrained_weights_overlay(cfg)
        if overlay is not None:
            kwargs['pretrained_cfg_overlay'] = overlay
    arch_kwargs = {**ARCH_VARIANTS[model_def.arch], **kwargs}  # explicit kwargs override the variant's defaults
    multiplier = model_def.multiplier
    model_kwargs = dict(
        block_args=decode_arch_def(_arch_def(first_stride=1 if small_input else 2)),
        small_input=small_input,
        num_features=1024,
        stem_size=16,
        fix_stem=multiplier < 0.75,
        round_chs_fn=partial(round_channels, multiplier=multiplier),
        norm_layer=partial(nn.BatchNorm2d, **resolve_bn_args(arch_kwargs)),
        act_layer=resolve_act_layer(arch_kwargs, 'hard_swish'),
        se_layer=partial(SqueezeExcite, gate_layer='hard_sigmoid', force_act_layer=nn.ReLU, rd_round_fn=round_channels),
        **arch_kwargs,
    )
    # stem and first block share a resolution with small inputs: 4 feature levels instead of 5
    num_levels = 4 if small_input else 5
    try:
        return build_model_with_cfg(
            XSepMobileNetV3, variant, pretrained,
            feature_cfg=dict(feature_cls='getter', out_indices=tuple(range(num_levels))),
            **model_kwargs,
        )
    except RuntimeError as e:  # torch's strict load lists every key: one line says what the user needs
        if not str(e).startswith('Error(s) in loading state_dict'):
            raise
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        source = (kwargs.get('pretrained_cfg_overlay') or {}).get('file') or 'the pretrained weights'
        raise WeightsError(f'{source} does not fit {variant} ({len(problems)} mismatches, the first: {problems[0]}); '
                           'the weights are for another architecture or width') from None


def _cfg(dataset: str = 'cifar10', **kwargs) -> dict:
    return {
        'input_size': (3, 32, 32), 'min_input_size': (3, 8, 8), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'interpolation': 'bilinear', **DATASET_CFGS[dataset],
        'first_conv': 'conv_stem', 'classifier': 'classifier',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2002.12046',
        'paper_name': 'XSepConv: Extremely Separated Convolution',
        **kwargs,
    }


def family_cfgs(record: Record) -> dict[str, dict]:
    """The family's pretrained cfgs from a record of published weights (xsep_zoo/published.json).

    Best first, since timm's default is an architecture's first tag; an architecture with no weights
    yet is registered, as timm does, with its tag for that.
    """
    tags = ranked_tags(record)
    cfgs = {f'{name}.{tag}': _cfg(record[f'{name}.{tag}']['dataset'], hf_hub_id=f'{HUB_ORG}/{name}.{tag}')
            for name in MODELS for tag in tags.get(name, ())}
    cfgs.update({f'{name}.{UNTRAINED_TAG}': _cfg() for name in MODELS if name not in tags})
    return cfgs


default_cfgs = generate_default_cfgs(family_cfgs(PUBLISHED))


@register_model
def mobilenetv3_small_dw_050(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_dw_050', pretrained, **kwargs)


@register_model
def mobilenetv3_small_dw_075(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_dw_075', pretrained, **kwargs)


@register_model
def mobilenetv3_small_dw_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_dw_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_dw_125(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_dw_125', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_050(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_050', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_075(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_075', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_125(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_125', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    """The paper's model: another name for mobilenetv3_small_xsep_100, with its weights."""
    return _create_mnv3_small('mobilenetv3_small_xsep_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_dw_k7_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_dw_k7_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_k7_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_k7_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_dw_ds7_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_dw_ds7_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_ds7_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_ds7_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_no2x2_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_no2x2_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_b_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_b_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_p_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_p_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_sympad_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_sympad_100', pretrained, **kwargs)


@register_model
def mobilenetv3_small_xsep_asympad_100(pretrained: bool = False, **kwargs) -> XSepMobileNetV3:
    return _create_mnv3_small('mobilenetv3_small_xsep_asympad_100', pretrained, **kwargs)
