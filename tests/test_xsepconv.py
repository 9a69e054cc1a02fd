"""The XSepConv layer: shapes, the paper's cost formulas, the variants and the padding strategies."""
import pytest
import torch
import torch.nn as nn

from xsep_zoo import PaddedConv2x2, XSepConv, count_cost, improved_padding_plan, padding_plan, symmetric_pad_groups
from xsep_zoo.xsepconv import PAD_DIRECTIONS, PADDING_MODES

from conftest import randomize_bn


def _dw(channels, k, stride=1):
    return nn.Conv2d(channels, channels, k, stride=stride, padding=k // 2, groups=channels, bias=False)


def _conv_params(module):
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize('variant', ['standard', 'no2x2', 'behind', 'parallel'])
@pytest.mark.parametrize('size', [4, 7, 16])
def test_stride1_keeps_size(variant, size):
    x = torch.randn(2, 12, size, size + 1)
    assert XSepConv(12, 5, variant=variant)(x).shape == x.shape


@pytest.mark.parametrize('variant', ['standard', 'no2x2', 'behind'])
def test_stride2_halves_size_like_depthwise(variant):
    for size in (8, 9, 14):
        x = torch.randn(2, 8, size, size)
        assert XSepConv(8, 7, stride=2, variant=variant)(x).shape == _dw(8, 7, stride=2)(x).shape


@pytest.mark.parametrize('k', [3, 5, 7, 9, 11])
def test_cost_ratio_stride1(k):
    c, h, w = 16, 12, 10
    xsep, dw = count_cost(XSepConv(c, k), (c, h, w)), count_cost(_dw(c, k), (c, h, w))
    assert xsep.macs == 4 * h * w * c + 2 * k * h * w * c
    assert xsep.macs / dw.macs == pytest.approx((4 + 2 * k) / k ** 2, rel=1e-12)
    assert _conv_params(XSepConv(c, k)) == 4 * c + 2 * k * c
    assert _conv_params(XSepConv(c, k)) / _conv_params(_dw(c, k)) == pytest.approx((4 + 2 * k) / k ** 2)
    if k == 5:
        assert round(xsep.macs / dw.macs, 2) == 0.56


@pytest.mark.parametrize('k', [3, 5, 7, 9])
def test_cost_ratio_downsampling(k):
    c, h, w = 16, 12, 8
    xsep, dw = count_cost(XSepConv(c, k, stride=2), (c, h, w)), count_cost(_dw(c, k, 2), (c, h, w))
    assert xsep.macs == 4 * h * w * c + k * h * w * c // 2 + k * h * w * c // 4
    ratio = xsep.macs / dw.macs
    assert ratio == pytest.approx((16 + 3 * k) / k ** 2, rel=1e-12)
    assert (ratio < 1) == (k >= 7)


def test_variants_share_cost_except_no2x2():
    c, k = 24, 5
    costs = {v: count_cost(XSepConv(c, k, variant=v), (c, 8, 8)) for v in ('standard', 'behind', 'parallel', 'no2x2')}
    for v in ('behind', 'parallel'):
        assert (costs[v].params, costs[v].macs) == (costs['standard'].params, costs['standard'].macs)
    assert costs['no2x2'].params < costs['standard'].params
    assert costs['no2x2'].macs == 2 * k * 8 * 8 * c


def test_variants_compute_what_they_say():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    std, behind, par = (XSepConv(8, 3, variant=v).eval() for v in ('standard', 'behind', 'parallel'))
    separated = lambda m, t: m.conv_kx1(m.bn_1xk(m.conv_1xk(t)))  # noqa: E731
    assert torch.equal(std(x), separated(std, std.bn_2x2(std.conv_2x2(x))))
    assert torch.equal(behind(x), behind.conv_2x2(behind.bn_kx1(separated(behind, x))))
    assert torch.allclose(par(x), par.bn_2x2(par.conv_2x2(x)) + separated(par, x))


@pytest.mark.parametrize('bad', [4, 2, 1, 0, -3, 5.0, '5'])
def test_bad_kernel_size(bad):
    with pytest.raises(ValueError, match=f'odd int >= 3, got {bad!r}'):
        XSepConv(8, bad)


def test_bad_variant_and_padding_mode():
    with pytest.raises(ValueError, match=r"unknown XSepConv variant 'diagonal'; allowed: 'standard'"):
        XSepConv(8, 5, variant='diagonal')
    with pytest.raises(ValueError, match=r"unknown padding mode 'center'; allowed: 'right_bottom'"):
        XSepConv(8, 5, padding_mode='center')
    with pytest.raises(ValueError, match="unknown padding mode 'up'"):
        PaddedConv2x2(8).pad_mode = 'up'
    with pytest.raises(ValueError, match="unknown padding strategy 'best'"):
        padding_plan('best', 3)
    with pytest.raises(ValueError, match='stride must be 1 or 2, got 3'):
        XSepConv(8, 5, stride=3)
    with pytest.raises(ValueError, match="'parallel' is defined for stride 1 only"):
        XSepConv(8, 5, stride=2, variant='parallel')


# --- padding ---------------------------------------------------------------------------------

def _centre_of_mass_shift(modes, channels=1, size=48):
    """Shift (dy, dx) per channel of an impulse's centre of mass through a chain of all-ones 2x2 convs."""
    x = torch.zeros(1, channels, size, size, dtype=torch.float64)
    x[..., size // 2, size // 2] = 1.0
    for mode in modes:
        layer = PaddedConv2x2(channels, mode).double()
        nn.init.ones_(layer.weight)
        x = layer(x)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=x.dtype), torch.arange(size, dtype=x.dtype), indexing='ij')
    mass = x.sum(dim=(-2, -1))
    dy = (x * ys).sum(dim=(-2, -1)) / mass - size // 2
    dx = (x * xs).sum(dim=(-2, -1)) / mass - size // 2
    return dy.flatten(), dx.flatten()


@pytest.mark.parametrize('n', range(1, 14))
@pytest.mark.parametrize('channels', [1, 4, 7])
def test_improved_plan_centre_of_mass(n, channels):
    dy, dx = _centre_of_mass_shift(improved_padding_plan(n), channels)
    if n % 4 == 0:
        assert torch.all(dy == 0) and torch.all(dx == 0)
    else:
        assert torch.all(dy.abs() <= 0.5) and torch.all(dx.abs() <= 0.5)


@pytest.mark.parametrize('n', range(1, 14))
def test_right_bottom_padding_drifts_to_top_left(n):
    dy, dx = _centre_of_mass_shift(['right_bottom'] * n)
    assert dy.item() == -n / 2 and dx.item() == -n / 2


def test_single_directions_shift_half_a_pixel_away_from_the_padded_side():
    expected = {
        'right_bottom': (-0.5, -0.5), 'left_top': (0.5, 0.5), 'left_bottom': (-0.5, 0.5), 'right_top': (0.5, -0.5)}
    for mode, shift in expected.items():
        dy, dx = _centre_of_mass_shift([mode])
        assert (dy.item(), dx.item()) == shift, mode


def test_improved_plan_order():
    cycle = ['right_bottom', 'left_top', 'left_bottom', 'right_top']
    assert improved_padding_plan(4) == cycle
    assert improved_padding_plan(6) == cycle + cycle[:2]
    assert improved_padding_plan(5) == cycle + ['symmetric']
    assert improved_padding_plan(1) == ['symmetric']
    assert padding_plan('right_bottom', 3) == ['right_bottom'] * 3


@pytest.mark.parametrize('channels, groups', [(4, [1, 1, 1, 1]), (5, [2, 1, 1, 1]), (6, [2, 2, 1, 1]),
                                              (7, [2, 2, 2, 1]), (10, [3, 3, 2, 2]), (3, [1, 1, 1, 0])])
def test_wu_symmetric_padding_groups(channels, groups):
    assert symmetric_pad_groups(channels) == groups
    # each channel is shifted by its own group's direction: rb, lt, lb, rt in contiguous groups
    dy, dx = _centre_of_mass_shift(['symmetric'], channels)
    expected = [d for d, g in zip(['right_bottom', 'left_top', 'left_bottom', 'right_top'], groups) for _ in range(g)]
    for ch, mode in enumerate(expected):
        edy, edx = _centre_of_mass_shift([mode])
        assert (dy[ch], dx[ch]) == (edy.item(), edx.item()), (ch, mode)


def test_symmetric_equals_padding_each_group():
    torch.manual_seed(0)
    layer = PaddedConv2x2(7, 'symmetric')
    x = torch.randn(2, 7, 5, 5)
    parts, start = [], 0
    for size, pad in zip([2, 2, 2, 1], [(0, 1, 0, 1), (1, 0, 1, 0), (1, 0, 0, 1), (0, 1, 1, 0)]):
        xs = nn.functional.pad(x[:, start:start + size], pad)
        parts.append(nn.functional.conv2d(xs, layer.weight[start:start + size], groups=size))
        start += size
    assert torch.allclose(layer(x), torch.cat(parts, dim=1))
    assert [PAD_DIRECTIONS[d] for d in ('right_bottom', 'left_top', 'left_bottom', 'right_top')] == \
        [(0, 1, 0, 1), (1, 0, 1, 0), (1, 0, 0, 1), (0, 1, 1, 0)]


@pytest.mark.parametrize('mode', PADDING_MODES)
def test_padded_conv_traces_under_fx(mode):
    layer = PaddedConv2x2(10, mode)  # 10 channels: unequal symmetric groups
    x = torch.randn(2, 10, 7, 9)
    torch.testing.assert_close(torch.fx.symbolic_trace(layer)(x), layer(x))


# --- inference form ---------------------------------------------------------------------------

@torch.no_grad()
def _before_and_after_reparameterize(m, x):
    """Outputs of `m` (its BNs randomized, eval mode) on `x` as built and after reparameterize()."""
    randomize_bn(m)
    m.eval()
    ref = m(x)
    m.reparameterize()
    return ref, m(x)


@pytest.mark.parametrize('variant, stride', [('standard', 1), ('standard', 2), ('no2x2', 1), ('behind', 1),
                                             ('behind', 2), ('parallel', 1)])
def test_reparameterize_keeps_the_function(variant, stride):
    torch.manual_seed(0)
    m = XSepConv(24, 5, stride=stride, variant=variant, padding_mode='symmetric', act_layer=nn.Hardswish)
    x = torch.randn(4, 24, 12, 12)
    ref, fused = _before_and_after_reparameterize(m, x)
    with torch.no_grad():
        m.reparameterize()  # idempotent
        again = m(x)
    assert m.fused and not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    assert (fused - ref).abs().max() <= 1e-5
    assert torch.equal(again, fused)


@pytest.mark.parametrize('mode', PADDING_MODES)
def test_reparameterized_2x2_is_a_3x3_depthwise_conv(mode):
    torch.manual_seed(0)
    m = XSepConv(10, 5, padding_mode=mode, act_layer=nn.Hardswish)  # 10 channels: unequal symmetric groups
    ref, out = _before_and_after_reparameterize(m, torch.randn(3, 10, 9, 7))
    conv = m.conv_2x2
    assert type(conv) is nn.Conv2d and (conv.kernel_size, conv.padding, conv.groups) == ((3, 3), (1, 1), 10)
    assert (out - ref).abs().max() <= 1e-5
    if mode != 'symmetric':  # the 2x2 kernel sits in the corner on the side of the padding
        unused_row, unused_col = (2 if 'top' in mode else 0), (2 if 'left' in mode else 0)
        assert not conv.weight[:, :, unused_row, :].any() and not conv.weight[:, :, :, unused_col].any()


def test_reparameterized_xsepconv_refuses_training():
    m = XSepConv(8, 3)
    with pytest.raises(RuntimeError, match='call it in eval mode'):
        m.reparameterize()
    m.eval().reparameterize()
    with pytest.raises(RuntimeError, match='reparameterized for inference .* cannot be trained'):
        m.train()
    m.eval()  # eval mode stays allowed
