"""XSepConv: Extremely Separated Convolution (Chen et al. 2020, arXiv:2002.12046).

A k x k depthwise conv is replaced by a 2x2 depthwise conv, a 1 x k and a k x 1 depthwise conv.
The two separated convs see only the row and the column through a pixel; the 2x2 conv in front of
them brings in the diagonal neighbours they miss, and widens the receptive field to k + 1. Each of
the three layers ends in BN + activation; the last one's is the enclosing block's own.

A 2x2 kernel has no centre, so keeping the spatial size needs one extra zero row and column on one
side, which shifts the features by half a pixel. `improved_padding_plan` picks the side per layer
so that the shifts cancel on paths through every 2x2 layer (the paper's improved symmetric padding);
on a path that skips some of them through residual connections they need not cancel. The
'symmetric' mode is the per-layer grouped padding of Wu et al. 2019 (arXiv:1903.08385).

For inference, `reparameterize()` folds the BatchNorms into the convs (optionally the block's own one after the
layer too), and on CPU the resulting chain runs as one fused op (`xsep_zoo/fused.py`).
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import fused as _fused
from ._checks import check_choice

__all__ = [
    'PAD_DIRECTIONS', 'PADDING_MODES', 'XSEP_VARIANTS', 'PaddedConv2x2', 'XSepConv',
    'PADDING_STRATEGIES', 'symmetric_pad_groups', 'improved_padding_plan', 'padding_plan',
]

# F.pad order is (left, right, top, bottom); the name says where the extra zeros go.
PAD_DIRECTIONS = {
    'right_bottom': (0, 1, 0, 1),
    'left_top': (1, 0, 1, 0),
    'left_bottom': (1, 0, 0, 1),
    'right_top': (0, 1, 1, 0),
}
# The cycle of directions of both symmetric strategies: each pair of neighbours cancels on one axis.
_DIRECTION_CYCLE = ('right_bottom', 'left_top', 'left_bottom', 'right_top')
PADDING_MODES = (*PAD_DIRECTIONS, 'symmetric')
XSEP_VARIANTS = ('standard', 'no2x2', 'behind', 'parallel')


def symmetric_pad_groups(channels: int) -> list[int]:
    """Channel counts of Wu et al.'s four padding groups: contiguous, the first `channels % 4` larger."""
    base, extra = divmod(channels, 4)
    return [base + (i < extra) for i in range(4)]


class PaddedConv2x2(nn.Conv2d):
    """2x2 depthwise conv that keeps the spatial size by zero-padding one row and one column.

    `padding_mode` is one of PAD_DIRECTIONS or 'symmetric' (Wu et al.: the channels split into four
    groups, one per direction). It may be reassigned after construction; a network-wide plan does so.
    """

    __jit_unused_properties__ = ['pad_mode']

    def __init__(self, channels: int, padding_mode: str = 'right_bottom', bias: bool = False):
        super().__init__(channels, channels, kernel_size=2, groups=channels, bias=bias)
        self.pad_mode = padding_mode

    @property
    def pad_mode(self) -> str:
        return self._pad_mode

    @pad_mode.setter
    def pad_mode(self, mode: str) -> None:
        check_choice('padding mode', mode, PADDING_MODES)
        self._pad_mode = mode
        # channel groups and the F.pad of each, resolved once here rather than in every forward
        if mode == 'symmetric':
            self._group_sizes = symmetric_pad_groups(self.in_channels)
            self._group_pads = [list(PAD_DIRECTIONS[d]) for d in _DIRECTION_CYCLE]
        else:
            self._group_sizes = [self.in_channels]
            self._group_pads = [list(PAD_DIRECTIONS[mode])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self._group_pads) == 1:
            x = F.pad(x, self._group_pads[0])
        else:
            groups = x.split(self._group_sizes, dim=1)
            # indexed, not zipped: FX cannot iterate over the traced result of split
            x = torch.cat([F.pad(groups[i], pad) for i, pad in enumerate(self._group_pads)], dim=1)
        return self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, pad_mode={self._pad_mode!r}'


def _depthwise(channels: int, kernel_size: tuple[int, int], stride: tuple[int, int]) -> nn.Conv2d:
    padding = (kernel_size[0] // 2, kernel_size[1] // 2)
    return nn.Conv2d(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels, bias=False)


class XSepConv(nn.Module):
    """Drop-in replacement for a k x k depthwise conv: 2x2 DW -> BN+act -> 1xk DW -> BN+act -> kx1 DW.

    The BN + activation after the last conv is not included: it is the enclosing block's (timm's
    `bn2`), exactly as after the depthwise conv this module replaces. With stride 2 the 1 x k conv
    downsamples the width and the k x 1 conv the height (the paper's downsampling XSepConv).

    Variants (the paper's ablations, Fig. 6):
        'standard': as above.
        'no2x2':    1xk DW -> BN+act -> kx1 DW.
        'behind':   1xk DW -> BN+act -> kx1 DW -> BN+act -> 2x2 DW  (XSepConv-B).
        'parallel': (2x2 DW -> BN+act) + (1xk DW -> BN+act -> kx1 DW), merged by a sum  (XSepConv-P).
                    Both branches see the block's input and end where the standard form's layers
                    end, so it has the same convs, BNs, params and multiply-adds; only the topology
                    differs (wider instead of deeper, receptive field k instead of k + 1).
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int = 5,
            stride: int = 1,
            variant: str = 'standard',
            padding_mode: str = 'right_bottom',
            act_layer: Callable[..., nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f'XSepConv kernel_size must be an odd int >= 3, got {kernel_size!r}')
        if stride not in (1, 2):
            raise ValueError(f'XSepConv stride must be 1 or 2, got {stride!r}')
        check_choice('XSepConv variant', variant, XSEP_VARIANTS)
        if variant == 'parallel' and stride != 1:
            raise ValueError("XSepConv variant 'parallel' is defined for stride 1 only, got stride 2")
        self.variant = variant
        self.kernel_size = kernel_size
        self.stride = stride
        k = kernel_size

        def bn_act(present: bool = True) -> nn.Module:
            return BatchNormAct2d(channels, act_layer=act_layer) if present else nn.Identity()

        # Absent layers are identities, so every variant has the same attribute names.
        self.conv_2x2 = PaddedConv2x2(channels, padding_mode) if variant != 'no2x2' else nn.Identity()
        self.bn_2x2 = bn_act(variant in ('standard', 'parallel'))
        self.conv_1xk = _depthwise(channels, (1, k), (1, stride))
        self.bn_1xk = bn_act()
        self.conv_kx1 = _depthwise(channels, (k, 1), (stride, 1))
        self.bn_kx1 = bn_act(variant == 'behind')
        # the enclosing block's BN + activation, once reparameterize(norm_act) has taken it in
        self.bn_out = nn.Identity()

        self.fused = False
        self.use_fused_op = False  # run the fused op (set by reparameterize, see fused.set_fused_op)
        self._op_acts = None  # (the layer's activation, the block's) as the op names them
        for name in _fused.TENSOR_ARGS:  # the folded weights in the op's layout: derived state, not saved
            self.register_buffer(f'_op_{name}', None, persistent=False)
        self.register_load_state_dict_post_hook(_repack_after_load)

    @torch.no_grad()
    def reparameterize(self, norm_act: Optional[nn.Module] = None) -> None:
        """Fold each internal BatchNorm into the conv before it, and the padded 2x2 conv into a 3x3 one.

        In eval mode the result computes the same function with fewer passes over memory and no
        padding copy, on the fast odd-kernel depthwise path; idempotent. It keeps
        no batch statistics, so it cannot train: switching it to training mode raises an error.
        Called by `timm.utils.reparameterize_model`.

        `norm_act` is the BatchNorm (+ activation, timm's BatchNormAct2d) that follows this layer in its block (timm's
        `bn2`): it is folded in too, so the layer computes `norm_act(layer(x))` and the caller replaces its own
        by an identity (the zoo's blocks do, see `XSepInvertedResidual`). On CPU, float32, the folded chain then
        runs as one op (`xsep_zoo/fused.py`); TorchScript, FX, ONNX and other devices run the plain convs.
        """
        if self.training:
            raise RuntimeError('reparameterize() folds BatchNorm running statistics: call it in eval mode')
        if not self.fused:
            self.conv_2x2, self.bn_2x2 = _fold_bn(self.conv_2x2, self.bn_2x2)
            self.conv_1xk, self.bn_1xk = _fold_bn(self.conv_1xk, self.bn_1xk)
            self.conv_kx1, self.bn_kx1 = _fold_bn(self.conv_kx1, self.bn_kx1)
            if isinstance(self.conv_2x2, PaddedConv2x2):
                self.conv_2x2 = _as_3x3(self.conv_2x2)
            self.train(False)  # the new modules too
            self.fused = True
        elif norm_act is None:
            return
        if norm_act is not None:
            self._take_in(norm_act)
        self._pack()

    def _take_in(self, norm: nn.Module) -> None:
        """Fold the block's BN after this layer into its last conv; its activation becomes `bn_out`."""
        if not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or norm.running_var is None:
            raise ValueError(
                'reparameterize(norm_act) folds a BatchNorm2d with running statistics (timm BatchNormAct2d '
                f'included), got {type(norm).__name__}')
        if norm.training:
            raise RuntimeError('reparameterize(norm_act) folds running statistics: put norm_act in eval mode')
        if not isinstance(self.bn_out, nn.Identity):
            raise RuntimeError('this XSepConv has already taken in the norm after it')
        if self.variant == 'parallel':
            self.bn_out = norm  # the sum of the two branches is between the convs and the BN: nothing to fold into
            return
        last = 'conv_2x2' if self.variant == 'behind' else 'conv_kx1'
        folded, self.bn_out = _fold_bn(getattr(self, last), norm)
        setattr(self, last, folded)

    def _pack(self, enable: bool = True) -> None:
        """Lay out the folded weights for the fused op, and turn it on (if `enable`) where it can run this layer."""
        packed = _fused.pack(self)
        for name in _fused.TENSOR_ARGS:
            setattr(self, f'_op_{name}', None if packed is None else packed['tensors'][name])
        self._op_acts = None if packed is None else packed['acts']
        self.use_fused_op = enable and packed is not None and _fused.op_available()

    def __setstate__(self, state: dict) -> None:
        # a layer unpickled in another process: the op is loaded there before the layer runs it
        super().__setstate__(state)
        if self.__dict__.get('use_fused_op'):
            self.use_fused_op = _fused.op_available()

    def train(self, mode: bool = True):
        if mode and self.fused:
            raise RuntimeError(
                'this XSepConv was reparameterized for inference (its BatchNorms are folded into the convs) '
                'and cannot be trained; train the model before reparameterize_model(), or build a fresh one')
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._runs_fused_op(x):
            return self._fused_op(x)
        if self.variant == 'parallel':
            x = self.bn_2x2(self.conv_2x2(x)) + self.conv_kx1(self.bn_1xk(self.conv_1xk(x)))
        elif self.variant == 'behind':
            x = self.conv_2x2(self.bn_kx1(self.conv_kx1(self.bn_1xk(self.conv_1xk(x)))))
        else:
            x = self.bn_2x2(self.conv_2x2(x))  # identities for 'no2x2'
            x = self.conv_kx1(self.bn_1xk(self.conv_1xk(x)))
        return self.bn_out(x)

    @torch.jit.unused
    def _runs_fused_op(self, x: torch.Tensor) -> bool:
        """Eager, torch.compile and torch.export on float32 inputs without autograd, on CPU (or CUDA where the
        Triton kernel is registered); the plain convs otherwise."""
        if not self.use_fused_op or _fused.captured_for_export(x):
            return False
        return _fused.runs_on(x, self.variant) and not (x.requires_grad and torch.is_grad_enabled())

    @torch.jit.unused
    def _fused_op(self, x: torch.Tensor) -> torch.Tensor:
        b = self._buffers  # one dict for the eight tensors: module attribute lookups cost more than the op at batch 1
        act, act_out = self._op_acts
        return torch.ops.xsep_zoo.fused_xsepconv.default(
            x, self.variant, self.stride, b['_op_w3'], b['_op_b3'], b['_op_w1'], b['_op_b1'], b['_op_wk'],
            b['_op_bk'], b['_op_scale'], b['_op_shift'], act, act_out)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, stride={self.stride}, variant={self.variant!r}'


def _fold_bn(conv: nn.Module, bn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(conv with the BN folded in, what remains of the BN: its activation); identities pass through."""
    if isinstance(bn, nn.Identity):
        return conv, bn
    rest = nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()
    return fuse_conv_bn_eval(conv, bn), rest


def _repack_after_load(layer: 'XSepConv', incompatible_keys) -> None:
    """load_state_dict into a reparameterized layer changes its conv weights: lay them out for the op again."""
    if layer.fused:
        layer._pack(enable=layer.use_fused_op)


@torch.no_grad()
def _as_3x3(conv: PaddedConv2x2) -> nn.Conv2d:
    """The same function as a 3x3 depthwise conv with ordinary padding 1.

    A 2x2 window padded on the left (top) covers each pixel and its left (upper) neighbour, one
    padded on the right (bottom) the pixel and its right (lower) one. Placed in the matching corner
    of a zero 3x3 kernel, each channel's 2x2 kernel sees the same pixels, Wu's grouped padding
    included (one corner per group). No padded copy of the input is made, and oneDNN runs odd
    depthwise kernels on its fast path (a 2x2 one, measured here, on a much slower one).
    """
    channels = conv.in_channels
    weight = conv.weight.new_zeros(channels, 1, 3, 3)
    start = 0
    for size, (left, right, top, bottom) in zip(conv._group_sizes, conv._group_pads):
        rows, cols = slice(0, 2) if top else slice(1, 3), slice(0, 2) if left else slice(1, 3)
        weight[start:start + size, :, rows, cols] = conv.weight[start:start + size]
        start += size
    conv3 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=conv.bias is not None)
    conv3 = conv3.to(device=conv.weight.device, dtype=conv.weight.dtype)
    conv3.weight.copy_(weight)
    if conv.bias is not None:
        conv3.bias.copy_(conv.bias)
    return conv3


def improved_padding_plan(num_layers: int) -> list[str]:
    """The paper's improved symmetric padding: layer i pads toward _DIRECTION_CYCLE[i % 4].

    Every four consecutive layers cancel each other's shift exactly; with N % 4 == 2 the last two
    are opposite, and with N % 4 == 1 the last layer uses Wu's grouped padding.
    """
    plan = [_DIRECTION_CYCLE[i % 4] for i in range(num_layers)]
    if num_layers % 4 == 1:
        plan[-1] = 'symmetric'
    return plan


PADDING_STRATEGIES = ('improved', *PADDING_MODES)


def padding_plan(strategy: str, num_layers: int) -> list[str]:
    """Padding mode of each of `num_layers` 2x2 layers (in forward order) under a network-wide strategy.

    'improved' is the paper's plan; any single padding mode ('symmetric', 'right_bottom', ...) is
    used for every layer.
    """
    check_choice('padding strategy', strategy, PADDING_STRATEGIES)
    if strategy == 'improved':
        return improved_padding_plan(num_layers)
    return [strategy] * num_layers
