"""The fused XSepConv op on CUDA, in Triton: the CUDA kernel of `torch.ops.xsep_zoo.fused_xsepconv`.

Same contract as the CPU kernel (xsep_zoo/fused.py). One program computes a tile of output rows x columns x channels:
it walks, once, the 1 x k stage rows that its k x 1 taps need, each computed from the input (the 3x3 stage in front
is recomputed for every 1 x k tap: arithmetic is cheap on a GPU, and it needs no scratch memory), and adds each row
to the output rows it feeds. 'standard', 'no2x2' and 'parallel' run in the kernel; 'behind' (a 3x3 conv after the
separated ones, whose recomputation would cost 9 k^2 loads an output) runs as plain convs.

`fused_xsepconv` also runs on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), which is how it is tested
without a GPU.
"""
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ['fused_xsepconv', 'register']

_ACTS = {'identity': 0, 'relu': 1, 'hardswish': 2}


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = x * tl.minimum(tl.maximum(x * (1.0 / 6.0) + 0.5, 0.0), 1.0)
    return x


@triton.jit
def _vector(ptr, c, cmask, HAS: tl.constexpr):
    """A (chunks, 16) per-channel vector at channels c as a [1, BC] row; zero where absent."""
    if HAS:
        v = tl.load(ptr + c, mask=cmask, other=0.0)
    else:
        v = tl.zeros(c.shape, dtype=tl.float32)
    return v[None, :]


@triton.jit
def _fused_xsepconv_kernel(
        x_ptr, y_ptr, w3_ptr, b3_ptr, w1_ptr, b1_ptr, wk_ptr, bk_ptr, scale_ptr, shift_ptr,
        C, H, W, Ho, Wo, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
        K: tl.constexpr, S: tl.constexpr, CHAIN_3X3: tl.constexpr, PARALLEL: tl.constexpr,
        HAS_B3: tl.constexpr, HAS_BK: tl.constexpr, HAS_SCALE: tl.constexpr,
        ACT: tl.constexpr, ACT_OUT: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr):
    P: tl.constexpr = K // 2
    row_blocks = tl.cdiv(Ho, BH)
    n = tl.program_id(0) // row_blocks
    oh0 = (tl.program_id(0) % row_blocks) * BH
    oh = oh0 + tl.arange(0, BH)  # [BH]
    ow = tl.program_id(1) * BW + tl.arange(0, BW)  # [BW]
    c = tl.program_id(2) * BC + tl.arange(0, BC)  # [BC]
    cmask = c < C
    # the weights' layout: (c // 16, tap, c % 16)
    cq = c // 16
    cl = c % 16
    c2 = c[None, :]
    cm2 = cmask[None, :]
    x_img = x_ptr + n.to(tl.int64) * sxn
    b1 = _vector(b1_ptr, c, cmask, True)
    b3 = _vector(b3_ptr, c, cmask, HAS_B3)

    acc = tl.zeros([BH, BW, BC], dtype=tl.float32)
    for rr in range((BH - 1) * S + K):  # the 1 x k stage rows of this tile's k x 1 taps
        r = oh0 * S - P + rr
        b = tl.zeros([BW, BC], dtype=tl.float32) + b1
        for i in tl.static_range(K):
            col = (ow * S - P + i)[:, None]  # [BW, 1]
            if CHAIN_3X3:  # the 3x3 stage at (r, col); zero in the 1 x k conv's padding
                a = tl.zeros([BW, BC], dtype=tl.float32) + b3
                for t in tl.static_range(9):
                    xr = r - 1 + t // 3
                    xc = col - 1 + t % 3
                    m = (xr >= 0) & (xr < H) & (xc >= 0) & (xc < W) & cm2
                    xv = tl.load(x_img + c2 * sxc + xr * sxh + xc * sxw, mask=m, other=0.0)
                    a += tl.load(w3_ptr + cq * 144 + t * 16 + cl, mask=cmask, other=0.0)[None, :] * xv
                a = tl.where((col >= 0) & (col < W), _act(a, ACT), 0.0)
            else:
                m = (r >= 0) & (r < H) & (col >= 0) & (col < W) & cm2
                a = tl.load(x_img + c2 * sxc + r * sxh + col * sxw, mask=m, other=0.0)
            b += tl.load(w1_ptr + cq * (K * 16) + i * 16 + cl, mask=cmask, other=0.0)[None, :] * a
        b = tl.where((r >= 0) & (r < H), _act(b, ACT), 0.0)
        j = r - (oh * S - P)  # the k x 1 tap through which row r feeds each output row
        jm = (j >= 0) & (j < K)
        wj = tl.load(wk_ptr + cq[None, :] * (K * 16) + j[:, None] * 16 + cl[None, :], mask=jm[:, None] & cm2,
                     other=0.0)  # [BH, BC]
        acc += wj[:, None, :] * b[None, :, :]

    oh3 = oh[:, None, None]
    ow3 = ow[None, :, None]
    c3 = c[None, None, :]
    acc += _vector(bk_ptr, c, cmask, HAS_BK)[None, :, :]
    if PARALLEL:  # the 3x3 branch at the output pixel (stride 1)
        t_acc = tl.zeros([BH, BW, BC], dtype=tl.float32) + b3[None, :, :]
        for t in tl.static_range(9):
            xr = oh3 - 1 + t // 3
            xc = ow3 - 1 + t % 3
            m = (xr >= 0) & (xr < H) & (xc >= 0) & (xc < W) & cmask[None, None, :]
            xv = tl.load(x_img + c3 * sxc + xr * sxh + xc * sxw, mask=m, other=0.0)
            t_acc += tl.load(w3_ptr + cq * 144 + t * 16 + cl, mask=cmask, other=0.0)[None, None, :] * xv
        acc += _act(t_acc, ACT)
    if HAS_SCALE:
        acc = acc * _vector(scale_ptr, c, cmask, True)[None, :, :] + _vector(shift_ptr, c, cmask, True)[None, :, :]
    out = _act(acc, ACT_OUT)
    m = (oh3 < Ho) & (ow3 < Wo) & cmask[None, None, :]
    tl.store(y_ptr + n.to(tl.int64) * syn + c3 * syc + oh3 * syh + ow3 * syw, out, mask=m)


def _conv_weight(packed: torch.Tensor, channels: int, shape: tuple[int, int]) -> torch.Tensor:
    """(chunks, taps, 16) back to a depthwise conv's (C, 1, kh, kw)."""
    return packed.transpose(1, 2).reshape(-1, packed.shape[1])[:channels].reshape(channels, 1, *shape)


def _bias(packed: Optional[torch.Tensor], channels: int) -> Optional[torch.Tensor]:
    return None if packed is None else packed.reshape(-1)[:channels]


def _behind(x, stride, w3, b3, w1, b1, wk, bk, scale, shift, act, act_out):
    """'behind' as plain convs: 1 x k -> act -> k x 1 -> act -> 3x3 -> the block's norm and activation."""
    c, k = x.shape[1], w1.shape[1]
    acts = {'identity': lambda t: t, 'relu': F.relu, 'hardswish': F.hardswish}
    y = acts[act](F.conv2d(x, _conv_weight(w1, c, (1, k)), _bias(b1, c), (1, stride), (0, k // 2), groups=c))
    y = acts[act](F.conv2d(y, _conv_weight(wk, c, (k, 1)), _bias(bk, c), (stride, 1), (k // 2, 0), groups=c))
    y = F.conv2d(y, _conv_weight(w3, c, (3, 3)), _bias(b3, c), 1, 1, groups=c)
    if scale is not None:
        y = y * _bias(scale, c).view(1, -1, 1, 1) + _bias(shift, c).view(1, -1, 1, 1)
    return acts[act_out](y)


def fused_xsepconv(x: torch.Tensor, variant: str, stride: int, w3: Optional[torch.Tensor],
                   b3: Optional[torch.Tensor], w1: torch.Tensor, b1: torch.Tensor, wk: torch.Tensor,
                   bk: Optional[torch.Tensor], scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], act: str,
                   act_out: str) -> torch.Tensor:
    """The op on CUDA tensors (or CPU ones under TRITON_INTERPRET=1); arguments as in xsep_zoo/fused.py."""
    if variant == 'behind':
        return _behind(x, stride, w3, b3, w1, b1, wk, bk, scale, shift, act, act_out)
    if variant not in ('standard', 'no2x2', 'parallel'):
        raise ValueError(
            f"fused_xsepconv: variant must be 'standard', 'no2x2', 'behind' or 'parallel', got {variant!r}")
    if stride not in (1, 2) or (variant == 'parallel' and stride != 1):
        raise ValueError(f'fused_xsepconv: stride must be 1 or 2 (1 for parallel), got {stride!r}')
    n, c, h, w = x.shape
    k = w1.shape[1]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if y.numel() == 0:
        return y
    bh, bw, bc = 4, min(16, triton.next_power_of_2(wo)), min(32, triton.next_power_of_2(c))
    grid = (n * triton.cdiv(ho, bh), triton.cdiv(wo, bw), triton.cdiv(c, bc))
    dummy = b1  # stands for the absent tensors; never read
    _fused_xsepconv_kernel[grid](
        x, y, w3 if w3 is not None else dummy, b3 if b3 is not None else dummy, w1, b1, wk,
        bk if bk is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, c, h, w, ho, wo, *x.stride(), *y.stride(),
        K=k, S=stride, CHAIN_3X3=variant == 'standard', PARALLEL=variant == 'parallel', HAS_B3=b3 is not None,
        HAS_BK=bk is not None, HAS_SCALE=scale is not None, ACT=_ACTS[act], ACT_OUT=_ACTS[act_out],
        BH=bh, BW=bw, BC=bc)
    return y


def register() -> bool:
    """Make this the CUDA kernel of torch.ops.xsep_zoo.fused_xsepconv, so reparameterized layers run it on CUDA.

    Opt-in until it has been timed against the plain convs on a GPU. Returns False where the op itself (built with
    the CPU kernel, which defines it) is not available.
    """
    from . import fused
    if not fused.op_available():
        return False
    if not fused._cuda_kernel:
        torch.library.register_kernel('xsep_zoo::fused_xsepconv', 'cuda', fused_xsepconv)
        fused._cuda_kernel = True
    return True
