"""One op for a reparameterized XSepConv and the BatchNorm + activation after it, on CPU.

After `reparameterize()` an XSepConv is three depthwise convs (a 3x3 holding the 2x2 kernel, 1 x k, k x 1) with
activations between them. Run as three ops, each writes and reads a whole feature map and pays a call's fixed cost,
so the layer is slower than the k x k depthwise conv it replaces although it does fewer multiply-adds.
`torch.ops.xsep_zoo.fused_xsepconv` (csrc/fused_xsepconv.cpp) runs the whole chain on rows of 16 channels kept in
per-thread buffers: the input is read once and the output written once. It is compiled on first use into torch's
extension cache; where that fails the layers run their plain convs, after one warning.

The op has a fake (meta) implementation, so torch.compile and torch.export carry it. TorchScript, FX and ONNX
export get the plain convs instead (`XSepConv.forward`), which any runtime can run. On CUDA the layers run their plain
convs unless `xsep_zoo.fused_triton.register()` has made the Triton kernel the op's CUDA kernel (opt-in: it is
tested under Triton's interpreter here, not yet timed on a GPU).

The op, for x of shape (N, C, H, W), float32, any memory format (channels_last is the fast one; the output keeps
x's format), k odd in 3..31:

    fused_xsepconv(x, variant, stride, w3, b3, w1, b1, wk, bk, scale, shift, act, act_out)

    'standard':  y = kx1(act(1xk(act(3x3(x)))))
    'no2x2':     y = kx1(act(1xk(x)))
    'behind':    y = 3x3(act(kx1(act(1xk(x)))))
    'parallel':  y = act(3x3(x)) + kx1(act(1xk(x)))           (stride 1 only)
    output = act_out(y * scale + shift), or act_out(y) without scale and shift

Each conv is depthwise with its bias added where one is given: 3x3 with padding 1 and stride 1, 1 x k with padding
(0, k // 2) and stride (1, stride), k x 1 with padding (k // 2, 0) and stride (stride, 1). Activations: 'identity',
'relu', 'hardswish'. Weights come in the kernel's layout (`pack` makes it once), 16 channels a vector: with
Q = ceil(C / 16), w3 is (Q, 9, 16) with tap 3 * dy + dx, w1 and wk (Q, k, 16), biases, scale and shift (Q, 16);
zero past channel C.
"""
import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn as nn

__all__ = ['captured_for_export', 'op_available', 'pack', 'plain_ops', 'runs_on', 'set_fused_op']

_SOURCE = Path(__file__).parent / 'csrc' / 'fused_xsepconv.cpp'
TENSOR_ARGS = ('w3', 'b3', 'w1', 'b1', 'wk', 'bk', 'scale', 'shift')
_MAX_KERNEL = 31


def _activations() -> dict[type, str]:
    from timm.layers.activations import HardSwish
    from timm.layers.activations_me import HardSwishMe
    return {nn.Identity: 'identity', nn.ReLU: 'relu', nn.Hardswish: 'hardswish', HardSwish: 'hardswish',
            HardSwishMe: 'hardswish'}


def _compile_flags() -> list[str]:
    """Vector instructions as far as torch itself uses them here, so a shared extension cache stays safe."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == 'AVX512':
        return ['-mavx512f', '-mavx512bw', '-mavx512dq', '-mavx512vl', '-mfma', '-mavx2']
    if capability == 'AVX2':
        return ['-mavx2', '-mfma']
    return []


def _build() -> None:
    """Compile (once per machine and flags: torch's extension cache) and load the op's library."""
    from torch.utils import cpp_extension
    flags = _compile_flags()
    suffix = torch.backends.cpu.get_cpu_capability().lower()
    cpp_extension.load(
        name=f'xsep_zoo_fused_{suffix}', sources=[str(_SOURCE)], is_python_module=False,
        extra_cflags=['-O3', '-ffp-contract=fast', '-fopenmp', *flags], extra_ldflags=['-fopenmp'])


def _fake(x, variant, stride, w3, b3, w1, b1, wk, bk, scale, shift, act, act_out):
    n, c, h, w = x.shape
    out = x.new_empty((n, c, (h - 1) // stride + 1, (w - 1) // stride + 1))
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


_loaded: Optional[bool] = None  # None: not tried yet in this process
_fake_registered = False
_cuda_kernel = False  # set by fused_triton.register()


def op_available() -> bool:
    """Whether the fused op is loaded, building it on the first call; a failed build warns once and returns False."""
    global _loaded, _fake_registered
    if _loaded is None:
        try:
            _build()
            if not _fake_registered:
                torch.library.register_fake('xsep_zoo::fused_xsepconv')(_fake)
                _fake_registered = True
            _loaded = True
        except Exception as e:  # no compiler, no headers, a failed link: all leave the plain convs, which work
            _loaded = False
            lines = str(e).strip().splitlines() or ['']
            reason = next((line for line in lines if 'error' in line.lower()), lines[-1]).strip()[:300]
            warnings.warn(
                f'xsep_zoo: the fused XSepConv CPU op could not be built ({type(e).__name__}: {reason}); '
                'reparameterized XSepConv layers run as three depthwise convs instead, with the same outputs',
                RuntimeWarning, stacklevel=2)
    return _loaded


def _act_of(module: nn.Module) -> Optional[str]:
    """The op's name for what `module` computes in eval mode, if it is one activation (dropout and identities aside)."""
    known = _activations()
    parts = list(module) if isinstance(module, nn.Sequential) else [module]
    acts = [known.get(type(m)) for m in parts if not isinstance(m, (nn.Identity, nn.Dropout))]
    if len(acts) > 1 or None in acts:
        return None
    return acts[0] if acts else 'identity'


def _vectors(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(C,) -> (Q, 16) and (C, taps) -> (Q, taps, 16): 16 channels a vector, zero past C."""
    if t is None:
        return None
    t = t.detach().float()
    channels = t.shape[0]
    chunks = -(-channels // 16)
    padded = t.new_zeros((chunks * 16, *t.shape[1:]))
    padded[:channels] = t
    if t.dim() == 1:
        return padded.reshape(chunks, 16)
    return padded.reshape(chunks, 16, -1).transpose(1, 2).contiguous()


def _taps(conv: nn.Module) -> Optional[torch.Tensor]:
    return None if isinstance(conv, nn.Identity) else _vectors(conv.weight.reshape(conv.out_channels, -1))


def _bias(conv: nn.Module) -> Optional[torch.Tensor]:
    return _vectors(getattr(conv, 'bias', None))


@torch.no_grad()
def pack(layer: nn.Module) -> Optional[dict]:
    """The op's arguments for a reparameterized XSepConv (weights in the op's layout), or None where it cannot run it.

    The op runs every variant with ReLU, hard-swish or no activation (one inside the layer, one after it),
    kernels up to 31; anything else (another activation, a norm after the layer that is not a BatchNorm) stays on
    the plain convs.
    """
    if not layer.fused or layer.kernel_size > _MAX_KERNEL:
        return None
    # the activations after the layer's internal BNs: absent ones are identities, the present ones must agree
    inner = {_act_of(m) for m in (layer.bn_2x2, layer.bn_1xk, layer.bn_kx1) if not isinstance(m, nn.Identity)}
    scale = shift = None
    out = layer.bn_out
    if isinstance(out, nn.BatchNorm2d):  # 'parallel': the block's BN after the sum, kept as scale and shift
        scale = torch.rsqrt(out.running_var + out.eps)
        scale = scale * out.weight.detach() if out.weight is not None else scale
        shift = -out.running_mean * scale + (out.bias.detach() if out.bias is not None else 0)
        out = nn.Sequential(out.drop, out.act) if hasattr(out, 'act') else nn.Identity()
    acts = (inner.pop() if len(inner) == 1 else None, _act_of(out))
    if None in acts:
        return None
    args = dict(w3=_taps(layer.conv_2x2), b3=_bias(layer.conv_2x2), w1=_taps(layer.conv_1xk),
                b1=_bias(layer.conv_1xk), wk=_taps(layer.conv_kx1), bk=_bias(layer.conv_kx1),
                scale=_vectors(scale), shift=_vectors(shift))
    if args['b1'] is None:  # a reparameterized 1 x k conv always has its BN folded in; the op wants the bias
        args['b1'] = torch.zeros_like(args['w1'][:, 0])
    return dict(tensors=args, acts=acts)


def captured_for_export(x) -> bool:
    """True while `x` is captured into a graph for TorchScript, FX or ONNX: they get the plain convs, which any
    runtime runs (torch.compile and torch.export keep the op). Cheapest checks first: this runs every call."""
    if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing():
        return True
    return torch.compiler.is_compiling() and torch.onnx.is_in_onnx_export()


def runs_on(x: torch.Tensor, variant: str) -> bool:
    """Whether the op has a kernel for x's device and dtype: CPU, or CUDA once the Triton kernel is registered
    (except 'behind', which it would run as plain convs anyway)."""
    if x.dtype != torch.float32:
        return False
    return x.is_cpu or (_cuda_kernel and x.is_cuda and variant != 'behind')


def _layers(model: nn.Module) -> Iterator[nn.Module]:
    from .xsepconv import XSepConv  # here: xsepconv imports this module
    return (m for m in model.modules() if isinstance(m, XSepConv) and m.fused)


def set_fused_op(model: nn.Module, enabled: bool = True) -> int:
    """Run the fused op (enabled) or the plain convs in every reparameterized XSepConv of `model`.

    Returns how many layers run the op now. reparameterize() enables it wherever the op can run the layer.
    """
    count = 0
    for layer in _layers(model):
        layer.use_fused_op = bool(enabled) and layer._op_acts is not None and op_available()
        count += layer.use_fused_op
    return count


@contextlib.contextmanager
def plain_ops(model: nn.Module) -> Iterator[nn.Module]:
    """Run the plain convs inside the block (to hook them, count them), then restore each layer's setting."""
    saved = [(layer, layer.use_fused_op) for layer in _layers(model)]
    try:
        for layer, _ in saved:
            layer.use_fused_op = False
        yield model
    finally:
        for layer, enabled in saved:
            layer.use_fused_op = enabled
