"""The fused CPU op for reparameterized XSepConv: the same outputs as the plain convs, and the fallbacks.

Every comparison first checks that the op ran (the plain convs were not called), so a silent fallback fails.
The first test builds the op (once per machine: torch's extension cache keeps it). A failed build fails these
tests; only where there is no C++ compiler at all do they skip.
"""
import contextlib
import copy
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d

from xsep_zoo import XSepConv, count_cost, fused
from xsep_zoo.mobilenetv3_xsep import XSepInvertedResidual
from xsep_zoo.xsepconv import PADDING_MODES

from conftest import randomize_bn

TOL = dict(atol=1e-5, rtol=1e-5)
SIZES = [(1, 1), (2, 3), (7, 5), (8, 8)]


@contextlib.contextmanager
def _threads(n: int):
    """Run with `n` intra-op threads, whatever the test process was given (one per core under pytest-xdist)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _without_op(test):
    """Marks a test that runs whether or not the op could be built."""
    test.without_op = True
    return test


@pytest.fixture(autouse=True)
def _op_built(request):
    if getattr(request.function, 'without_op', False) or fused.op_available():
        return
    if shutil.which(os.environ.get('CXX', 'c++')) is None:
        pytest.skip('no C++ compiler: the fused op cannot be built here (the plain convs run instead)')
    pytest.fail('the fused op could not be built (see the warning)')


class _PlainConvsCalled(Exception):
    pass


def _forbid_plain_convs(model):
    """Hooks that fail a forward through the plain convs of fused layers: the op must have run instead."""
    def hook(*_):
        raise _PlainConvsCalled
    layers = [m for m in model.modules() if isinstance(m, XSepConv) and m.use_fused_op]
    assert layers, 'no layer runs the fused op'
    return [m.conv_1xk.register_forward_hook(hook) for m in layers]


@torch.no_grad()
def _fused_out(model, x):
    handles = _forbid_plain_convs(model)
    try:
        return model(x)
    finally:
        for h in handles:
            h.remove()


def _layer_and_norm(channels, k, stride, variant, mode, act, seed=0):
    torch.manual_seed(seed)
    layer = XSepConv(channels, k, stride, variant=variant, padding_mode=mode, act_layer=act)
    norm = BatchNormAct2d(channels, act_layer=act)
    randomize_bn(layer, seed + 1)
    randomize_bn(norm, seed + 2)
    return layer.eval(), norm.eval()


def _inputs(channels, batch, size):
    x = torch.randn(batch, channels, *size)
    return {'contiguous': x, 'channels_last': x.contiguous(memory_format=torch.channels_last)}


@pytest.mark.parametrize('mode', PADDING_MODES)
@pytest.mark.parametrize('variant, stride', [('standard', 1), ('standard', 2), ('no2x2', 1), ('no2x2', 2),
                                             ('behind', 1), ('behind', 2), ('parallel', 1)])
def test_layer_with_block_norm_matches_plain(variant, stride, mode):
    for channels, batch in ((6, 1), (13, 3), (40, 2)):  # even, odd, more than two 16-channel vectors
        layer, norm = _layer_and_norm(channels, 5, stride, variant, mode, nn.Hardswish)
        inputs = [_inputs(channels, batch, size) for size in SIZES]
        with torch.no_grad():
            refs = [{fmt: norm(layer(x)) for fmt, x in xs.items()} for xs in inputs]
        layer.reparameterize(norm)
        assert layer.use_fused_op
        for xs, ref in zip(inputs, refs):
            for fmt, x in xs.items():
                out = _fused_out(layer, x)
                assert out.shape == ref[fmt].shape
                torch.testing.assert_close(out, ref[fmt], **TOL, msg=lambda m: f'{channels} ch, {fmt} {x.shape}: {m}')


@pytest.mark.parametrize('variant, stride', [('standard', 1), ('standard', 2), ('parallel', 1)])
def test_batch_256_matches_plain(variant, stride):
    """A large batch splits by image across threads (a small one by channels and rows): both paths are exact."""
    layer, norm = _layer_and_norm(13, 5, stride, variant, 'symmetric', nn.Hardswish)
    for xs in (_inputs(13, 256, (7, 6)), _inputs(13, 256, (1, 1))):
        with torch.no_grad():
            refs = {fmt: norm(layer(x)) for fmt, x in xs.items()}
        fused = copy.deepcopy(layer)
        fused.reparameterize(copy.deepcopy(norm))
        for fmt, x in xs.items():
            with _threads(2):
                torch.testing.assert_close(_fused_out(fused, x), refs[fmt], **TOL, msg=lambda m: f'{fmt}: {m}')


@pytest.mark.parametrize('k', [3, 5, 7, 9])
@pytest.mark.parametrize('act', [nn.ReLU, nn.Hardswish])
@pytest.mark.parametrize('with_norm', [True, False])
def test_kernel_sizes_activations_and_layer_level(k, act, with_norm):
    """k = 9 runs the kernel's generic path; without the block's norm the layer alone is fused."""
    for stride in (1, 2):
        layer, norm = _layer_and_norm(21, k, stride, 'standard', 'symmetric', act)
        torch.manual_seed(k)
        xs = [torch.randn(2, 21, 11, 6), torch.randn(1, 21, 4, 9).contiguous(memory_format=torch.channels_last)]
        with torch.no_grad():
            refs = [norm(layer(x)) if with_norm else layer(x) for x in xs]
        layer.reparameterize(norm if with_norm else None)
        for x, ref in zip(xs, refs):
            out = _fused_out(layer, x)
            if not with_norm:
                out = norm(out)
                ref = norm(ref)
            torch.testing.assert_close(out, ref, **TOL)


@pytest.mark.parametrize('variant, stride', [('standard', 2), ('behind', 1), ('parallel', 1), ('no2x2', 2)])
def test_threads_split_small_batches_into_channel_groups_and_row_bands(variant, stride):
    """With several threads, batch 1 is split by groups of 16 channels, then by bands of rows (with their halos)."""
    with _threads(3):
        for channels, size in ((13, (11, 9)), (100, (9, 10)), (40, (2, 17))):
            layer, norm = _layer_and_norm(channels, 5, stride, variant, 'right_top', nn.ReLU)
            xs = _inputs(channels, 1, size)
            with torch.no_grad():
                refs = {fmt: norm(layer(x)) for fmt, x in xs.items()}
            layer.reparameterize(norm)
            for fmt, x in xs.items():
                torch.testing.assert_close(_fused_out(layer, x), refs[fmt], **TOL)


def test_output_keeps_the_memory_format_and_odd_strides_work():
    layer, norm = _layer_and_norm(10, 5, 2, 'standard', 'left_bottom', nn.ReLU)
    x = torch.randn(2, 10, 9, 12)
    with torch.no_grad():
        ref = norm(layer(x))
    layer.reparameterize(norm)
    assert _fused_out(layer, x).is_contiguous()
    assert _fused_out(layer, x.contiguous(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(_fused_out(layer, x), ref, **TOL)
    strided = torch.randn(2, 20, 9, 24)[:, ::2, :, ::2]  # neither layout
    with torch.no_grad(), fused.plain_ops(layer):
        plain = layer(strided)
    torch.testing.assert_close(_fused_out(layer, strided), plain, **TOL)


@pytest.mark.parametrize('name', ['mobilenetv3_small_xsep_100', 'mobilenetv3_small_xsep_k7_100',
                                  'mobilenetv3_small_xsep_ds7_100'])
def test_reparameterized_model_matches(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    model(torch.randn(8, 3, 32, 32))  # one training-mode pass: BN statistics that are not the identity
    model.eval()
    fused_model = timm.utils.reparameterize_model(model)
    blocks = [b for b in fused_model.modules() if isinstance(b, XSepInvertedResidual)]
    assert blocks and all(isinstance(b.bn2, nn.Identity) and b.conv_dw.use_fused_op for b in blocks)
    x = torch.randn(3, 3, 32, 32)
    for inputs in (x, x.contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            ref = model(inputs)
        torch.testing.assert_close(_fused_out(fused_model, inputs), ref, **TOL)
    with pytest.raises(RuntimeError, match='reparameterized for inference .* cannot be trained'):
        fused_model.train()


def test_plain_path_for_autograd_other_dtypes_and_switch():
    layer, norm = _layer_and_norm(12, 5, 1, 'standard', 'right_bottom', nn.Hardswish)
    layer.reparameterize(norm)
    x = torch.randn(2, 12, 6, 6, requires_grad=True)
    layer(x).sum().backward()  # the op has no backward: a differentiable input takes the plain convs
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        ref = _fused_out(layer, x)
        assert fused.set_fused_op(layer, False) == 0 and not layer.use_fused_op
        torch.testing.assert_close(layer(x), ref, **TOL)
        assert fused.set_fused_op(layer, True) == 1
        with fused.plain_ops(layer):
            assert not layer.use_fused_op
        assert layer.use_fused_op
        torch.testing.assert_close(layer.double()(x.double()), ref.double(), atol=1e-5, rtol=1e-5)


def test_count_cost_sees_the_convs_of_a_fused_model():
    torch.manual_seed(0)
    model = timm.utils.reparameterize_model(timm.create_model('mobilenetv3_small_xsep_050').eval())
    plain = timm.utils.reparameterize_model(model)
    fused.set_fused_op(plain, False)
    assert count_cost(model, (3, 32, 32)) == count_cost(plain, (3, 32, 32))
    assert all(m.use_fused_op for m in model.modules() if isinstance(m, XSepConv))


def test_load_state_dict_lays_out_the_new_weights():
    def fused_model(seed):
        torch.manual_seed(seed)
        model = timm.create_model('mobilenetv3_small_xsep_050')
        randomize_bn(model, seed)
        return timm.utils.reparameterize_model(model.eval())
    a, b = fused_model(0), fused_model(1)
    x = torch.randn(2, 3, 32, 32)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(_fused_out(b, x), _fused_out(a, x), atol=0, rtol=0)


def test_pickled_fused_layer_loads_the_op_in_a_fresh_process(tmp_path):
    layer, norm = _layer_and_norm(12, 5, 2, 'standard', 'left_top', nn.Hardswish)
    layer.reparameterize(norm)
    x = torch.randn(2, 12, 7, 7)
    torch.save({'layer': layer, 'x': x, 'out': _fused_out(layer, x)}, tmp_path / 'layer.pt')
    script = textwrap.dedent(f"""
        import torch, xsep_zoo
        saved = torch.load({str(tmp_path / 'layer.pt')!r}, weights_only=False)
        assert saved['layer'].use_fused_op
        with torch.no_grad():
            torch.testing.assert_close(saved['layer'](saved['x']), saved['out'], atol=0, rtol=0)
        print('ok')
    """)
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0 and done.stdout.strip().endswith('ok'), done.stderr[-3000:]


def test_exports_get_the_plain_convs():
    layer, norm = _layer_and_norm(8, 3, 1, 'standard', 'symmetric', nn.ReLU)
    layer.reparameterize(norm)
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        out = _fused_out(layer, x)
        traced = torch.jit.trace(layer, x)
        scripted = torch.jit.script(layer)
        for graph_module in (traced, scripted):
            assert 'xsep_zoo::' not in str(graph_module.inlined_graph)
            torch.testing.assert_close(graph_module(x), out, **TOL)
        gm = torch.fx.symbolic_trace(layer)
        assert not any('xsep_zoo' in str(n.target) for n in gm.graph.nodes)
        torch.testing.assert_close(gm(x), out, **TOL)
        exported = torch.export.export(layer, (x,))  # torch.export carries the op
        assert any('xsep_zoo' in str(n.target) for n in exported.graph.nodes)
        torch.testing.assert_close(exported.module()(x), out, **TOL)


def test_torch_compile_runs_the_op():
    torch.manual_seed(0)
    block = timm.create_model('mobilenetv3_small_xsep_050').blocks[2][1]
    assert isinstance(block, XSepInvertedResidual)
    randomize_bn(block)
    block.eval()
    x = torch.randn(2, block.conv_pw.in_channels, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        compiled = torch.compile(block, fullgraph=True)
        torch.testing.assert_close(_fused_out(compiled, x), ref, **TOL)


@pytest.mark.parametrize('variant, fmt', [('standard', torch.channels_last), ('no2x2', torch.contiguous_format),
                                          ('behind', torch.channels_last), ('parallel', torch.contiguous_format)])
def test_opcheck(variant, fmt):
    layer, norm = _layer_and_norm(19, 5, 1, variant, 'symmetric', nn.Hardswish)
    layer.reparameterize(norm)
    x = torch.randn(2, 19, 7, 6).contiguous(memory_format=fmt)
    args = (x, layer.variant, layer.stride, *[getattr(layer, f'_op_{n}') for n in fused.TENSOR_ARGS], *layer._op_acts)
    torch.library.opcheck(torch.ops.xsep_zoo.fused_xsepconv.default, args)


def test_op_errors_name_the_bad_value():
    x = torch.randn(1, 4, 5, 5)
    w3, w, b = torch.zeros(1, 9, 16), torch.zeros(1, 5, 16), torch.zeros(1, 16)
    op = torch.ops.xsep_zoo.fused_xsepconv.default
    with pytest.raises(RuntimeError, match="variant must be 'standard', 'no2x2', 'behind' or 'parallel', got 'wide'"):
        op(x, 'wide', 1, w3, None, w, b, w, None, None, None, 'relu', 'relu')
    with pytest.raises(RuntimeError, match='stride must be 1 or 2, got 3'):
        op(x, 'standard', 3, w3, None, w, b, w, None, None, None, 'relu', 'relu')
    with pytest.raises(RuntimeError, match="act must be 'identity', 'relu' or 'hardswish', got 'gelu'"):
        op(x, 'standard', 1, w3, None, w, b, w, None, None, None, 'gelu', 'relu')
    with pytest.raises(RuntimeError, match=r'wk must have shape \(1, 5, 16\), got \[1, 3, 16\]'):
        op(x, 'standard', 1, w3, None, w, b, torch.zeros(1, 3, 16), None, None, None, 'relu', 'relu')


@_without_op
def test_failed_build_warns_once_and_runs_the_plain_convs(monkeypatch):
    def no_compiler():
        raise RuntimeError('Error building extension: c++: command not found')
    monkeypatch.setattr(fused, '_build', no_compiler)
    monkeypatch.setattr(fused, '_loaded', None)
    layers = [_layer_and_norm(9, 5, 1, 'standard', 'symmetric', nn.Hardswish, seed) for seed in (0, 1)]
    x = torch.randn(2, 9, 7, 7)
    with torch.no_grad():
        refs = [norm(layer(x)) for layer, norm in layers]
    with pytest.warns(RuntimeWarning, match=r'could not be built \(RuntimeError: .*command not found\)'):
        layers[0][0].reparameterize(layers[0][1])
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once: the second layer is silent
        layers[1][0].reparameterize(layers[1][1])
    for (layer, _), ref in zip(layers, refs):
        assert not layer.use_fused_op and fused.set_fused_op(layer, True) == 0
        with torch.no_grad():
            torch.testing.assert_close(layer(x), ref, **TOL)


def test_unsupported_activation_keeps_the_plain_convs():
    layer, norm = _layer_and_norm(8, 5, 1, 'standard', 'left_top', nn.GELU)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        ref = norm(layer(x))
        layer.reparameterize(norm)
        assert not layer.use_fused_op
        torch.testing.assert_close(layer(x), ref, **TOL)


_TRITON_CHECK = textwrap.dedent("""
    import torch, torch.nn as nn
    from timm.layers import BatchNormAct2d
    from xsep_zoo import XSepConv, fused, fused_triton
    cases = [('standard', 1, 20, (5, 6), 3, True), ('standard', 2, 13, (7, 5), 5, False),
             ('no2x2', 2, 20, (6, 7), 5, True), ('parallel', 1, 13, (5, 5), 3, False),
             ('behind', 2, 13, (5, 5), 3, True), ('standard', 1, 17, (1, 1), 3, True)]
    for variant, stride, channels, size, k, channels_last in cases:
        torch.manual_seed(0)
        layer = XSepConv(channels, k, stride, variant=variant, padding_mode='symmetric', act_layer=nn.Hardswish)
        norm = BatchNormAct2d(channels, act_layer=nn.Hardswish)
        for bn in [m for m in (*layer.modules(), norm) if isinstance(m, nn.BatchNorm2d)]:
            bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.normal_(), bn.bias.data.normal_()
        layer.eval(), norm.eval()
        x = torch.randn(2, channels, *size)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.no_grad():
            ref = norm(layer(x))
            layer.reparameterize(norm)
            args = [getattr(layer, f'_op_{name}') for name in fused.TENSOR_ARGS]
            out = fused_triton.fused_xsepconv(x, variant, stride, *args, *layer._op_acts)
        assert out.stride() == ref.stride() or size == (1, 1), (variant, out.stride(), ref.stride())
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=lambda m: f'{variant}: {m}')
    print('ok')
""")


def test_triton_kernel_under_the_interpreter():
    """The CUDA kernel, run on CPU tensors by Triton's interpreter (set before triton.jit runs: a fresh process)."""
    pytest.importorskip('triton')
    env = {**os.environ, 'TRITON_INTERPRET': '1', 'OMP_NUM_THREADS': '1'}
    done = subprocess.run([sys.executable, '-c', _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith('ok'), done.stderr[-3000:]
