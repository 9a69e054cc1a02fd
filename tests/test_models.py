"""The registered MobileNetV3-Small family: forward/backward, timm's API, costs, padding plans, errors, tracing."""
import pytest
import timm
import torch
from timm.models.mobilenetv3 import MobileNetV3

import xsep_zoo
from xsep_zoo import count_cost
from xsep_zoo.mobilenetv3_xsep import DOWN, LAST, MID
from xsep_zoo.pretrained import published_tags

ALL_MODELS = sorted(set(timm.list_models('mobilenetv3_small_dw_*') + timm.list_models('mobilenetv3_small_xsep*')))
# (XSepConv model, the baseline it is compared with)
PAIRS = [(f'mobilenetv3_small_xsep_{w}', f'mobilenetv3_small_dw_{w}') for w in ('050', '075', '100', '125')] + [
    ('mobilenetv3_small_xsep_k7_100', 'mobilenetv3_small_dw_k7_100'),
    ('mobilenetv3_small_xsep_ds7_100', 'mobilenetv3_small_dw_ds7_100'),
] + [(f'mobilenetv3_small_xsep_{a}_100', 'mobilenetv3_small_dw_100') for a in ('no2x2', 'b', 'p', 'sympad', 'asympad')]


def _slot_name(slot):
    return f'blocks.{slot[0]}.{slot[1]}.conv_dw'


def test_registry_lists_the_whole_family():
    assert set(xsep_zoo.MODEL_NAMES) | {'mobilenetv3_small_xsep'} == set(ALL_MODELS)
    assert len(ALL_MODELS) == 18
    assert 'mobilenetv3_small_xsep' in timm.list_models('*xsep*')
    assert {x for p in PAIRS for x in p} == set(xsep_zoo.MODEL_NAMES)
    assert {(name, m.dw_partner) for name, m in xsep_zoo.MODELS.items() if m.dw_partner} == set(PAIRS)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_forward_backward_channels_last(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    assert isinstance(model, MobileNetV3)
    for size in (32, 56, 64):
        x = torch.randn(2, 3, size, size)
        model.train()
        out = model(x)
        assert out.shape == (2, 10)
        out.logsumexp(1).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
        model.eval()
        with torch.no_grad():
            ref = model(x)
            cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
            model.to(memory_format=torch.contiguous_format)
        assert ref.shape == (2, 10)
        torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_imagenet_strides_at_224(name):
    model = timm.create_model(name, small_input=False, num_classes=1000)
    assert model.feature_info[-1]['reduction'] == 32
    x = torch.randn(2, 3, 224, 224)
    model.train()
    model(x).sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
        assert model.forward_features(x).shape[-2:] == (7, 7)


def test_small_input_strides():
    model = timm.create_model('mobilenetv3_small_xsep').eval()
    assert [f['reduction'] for f in model.feature_info] == [1, 2, 4, 8]
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]


def test_dw_at_imagenet_strides_is_timms_mobilenetv3_small():
    ours = timm.create_model('mobilenetv3_small_dw_100', small_input=False, num_classes=1000).eval()
    ref = timm.create_model('mobilenetv3_small_100').eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_baseline_counts_match_the_first_authors_network():
    cost = count_cost(timm.create_model('mobilenetv3_small_dw_100'))
    assert round(cost.macs / 1e6, 2) == 17.51
    assert round(cost.params / 1e6, 2) == 1.53


@pytest.mark.parametrize('xsep, dw', PAIRS)
def test_xsep_is_cheaper_than_its_baseline(xsep, dw):
    a, b = count_cost(timm.create_model(xsep)), count_cost(timm.create_model(dw))
    assert a.macs < b.macs and a.params < b.params


def test_per_layer_macs_follow_the_paper():
    dw, xsep = (count_cost(timm.create_model(f'mobilenetv3_small_{v}_100'), (3, 32, 32)) for v in ('dw', 'xsep'))
    for slots, k_xsep in ((MID, 5), (LAST, 3)):
        for slot in slots:
            # the baseline's layer is 5x5; XSepConv k=3 in the last stage: (4 + 2k) / 25
            assert xsep.macs_of(_slot_name(slot)) / dw.macs_of(_slot_name(slot)) == pytest.approx((4 + 2 * k_xsep) / 25)
    dw7, xsep7 = (count_cost(timm.create_model(f'mobilenetv3_small_{v}_k7_100')) for v in ('dw', 'xsep'))
    for slot in MID:
        assert xsep7.macs_of(_slot_name(slot)) / dw7.macs_of(_slot_name(slot)) == pytest.approx(18 / 49)
    ds_dw, ds_xsep = (count_cost(timm.create_model(f'mobilenetv3_small_{v}_ds7_100')) for v in ('dw', 'xsep'))
    name = _slot_name(DOWN[0])
    assert ds_xsep.macs_of(name) / ds_dw.macs_of(name) == pytest.approx((16 + 21) / 49)
    # everything outside the slots under study is identical
    others = set(dw.layer_macs) & set(xsep.layer_macs)
    assert all(dw.layer_macs[n] == xsep.layer_macs[n] for n in others if '.conv_dw' not in n)


@pytest.mark.parametrize('name, modes', [
    ('mobilenetv3_small_xsep_100',
     ['right_bottom', 'left_top', 'left_bottom', 'right_top', 'right_bottom', 'left_top']),
    ('mobilenetv3_small_xsep_k7_100', ['right_bottom', 'left_top', 'left_bottom', 'right_top']),
    ('mobilenetv3_small_xsep_ds7_100', ['symmetric']),
    ('mobilenetv3_small_xsep_sympad_100', ['symmetric'] * 6),
    ('mobilenetv3_small_xsep_asympad_100', ['right_bottom'] * 6),
    ('mobilenetv3_small_xsep_no2x2_100', []),
    ('mobilenetv3_small_dw_100', []),
])
def test_padding_plan(name, modes):
    model = timm.create_model(name)
    assert [m for _, m in model.padding_plan] == modes
    for module_name, mode in model.padding_plan:
        assert model.get_submodule(module_name).pad_mode == mode


def test_padding_plan_follows_forward_order():
    model = timm.create_model('mobilenetv3_small_xsep_b_100')
    order = []
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: order.append(n))
             for n, _ in model.padding_plan]
    model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert order == [n for n, _ in model.padding_plan]


def test_timm_api():
    model = timm.create_model('mobilenetv3_small_xsep', num_classes=37).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 37)
    assert model.forward_features(x).shape == (2, 576, 4, 4)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 1024)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 1024)

    feats = timm.create_model('mobilenetv3_small_xsep_075', features_only=True, out_indices=(1, 3)).eval()
    outs = feats(x)
    assert [o.shape[1:] for o in outs] == [torch.Size(s) for s in ((24, 16, 16), (432, 4, 4))]
    assert feats.feature_info.channels() == [24, 432] and feats.feature_info.reduction() == [2, 8]
    assert len(timm.create_model('mobilenetv3_small_dw_100', features_only=True)(x)) == 4


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model('mobilenetv3_small_xsep_100').eval()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_pretrained_cfg():
    for name in xsep_zoo.MODEL_NAMES:
        cfg = timm.create_model(name).pretrained_cfg
        default = (published_tags(name) or ['untrained'])[0]  # the best published weights (tests/test_registry.py)
        assert cfg.get('hf_hub_id') == (f'xsep-zoo/{name}.{default}' if default != 'untrained' else None)
        assert cfg['tag'] == default and cfg['architecture'] == name
        assert cfg['num_classes'] == 10 and cfg['input_size'] == (3, 32, 32)
        assert cfg['license'] == 'apache-2.0' and cfg['paper_ids'] == 'arXiv:2002.12046'
        assert len(cfg['mean']) == len(cfg['std']) == 3
    assert timm.create_model('mobilenetv3_small_xsep').pretrained_cfg['hf_hub_id'] == \
        'xsep-zoo/mobilenetv3_small_xsep_100.cifar10_e400'
    assert 'mobilenetv3_small_xsep_100.cifar10' in timm.list_pretrained('*xsep*')


def test_kwargs_override_the_variant():
    model = timm.create_model('mobilenetv3_small_xsep_100', padding='symmetric', xsep_variant='behind')
    assert {m for _, m in model.padding_plan} == {'symmetric'}
    assert model.blocks[2][1].conv_dw.variant == 'behind'


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown padding strategy 'diagonal'; allowed: 'improved'"):
        timm.create_model('mobilenetv3_small_xsep', padding='diagonal')
    allowed = "'standard', 'no2x2', 'behind', 'parallel'"
    with pytest.raises(ValueError, match=f"unknown xsep_variant 'sideways'; allowed: {allowed}"):
        timm.create_model('mobilenetv3_small_xsep', xsep_variant='sideways')
    with pytest.raises(ValueError, match="depthwise op 'xsep4': kernel size must be odd and >= 3, got 4"):
        timm.create_model('mobilenetv3_small_dw_100', ops={MID: 'xsep4'})
    with pytest.raises(ValueError, match="unknown depthwise op 'conv5'"):
        timm.create_model('mobilenetv3_small_dw_100', ops={MID: 'conv5'})
    with pytest.raises(ValueError, match=r'no block at slot \(9, 0\)'):
        timm.create_model('mobilenetv3_small_dw_100', ops={(9, 0): 'xsep5'})
    with pytest.raises(ValueError, match=r'slot \(5, 0\) \(ConvBnAct\) has no depthwise conv'):
        timm.create_model('mobilenetv3_small_dw_100', ops={(5, 0): 'xsep5'})


def test_bad_inputs():
    model = timm.create_model('mobilenetv3_small_xsep').eval()
    with pytest.raises(ValueError,
                       match=r'expected a 4D input \(batch, channels, height, width\), got shape \(3, 32, 32\)'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r'expected 3 input channels, got 1'):
        model(torch.randn(2, 1, 32, 32))
    too_small = 'input 7x32 is too small: this network has total stride 8, so height and width must be at least 8'
    with pytest.raises(ValueError, match=too_small):
        model(torch.randn(2, 3, 7, 32))
    with pytest.raises(ValueError, match='total stride 32'):
        timm.create_model('mobilenetv3_small_dw_100', small_input=False)(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match='too small'):
        model.forward_intermediates(torch.randn(1, 3, 4, 4))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_torchscript_and_trace(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    for training in (True, False):  # train first: eval mode then uses BN statistics that are not the identity
        model.train(training)
        scripted.train(training)
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(scripted(x), ref)
            # check_trace would trace a second time, for a check the comparison here makes
            torch.testing.assert_close(torch.jit.trace(model, x, check_trace=False)(x), ref)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_fx_symbolic_trace(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    x = torch.randn(2, 3, 32, 32)
    for training in (True, False):  # train first: eval mode then uses BN statistics that are not the identity
        model.train(training)
        graph = torch.fx.symbolic_trace(model)  # one per mode, as it fixes the BNs' `training` branch
        with torch.no_grad():
            torch.testing.assert_close(graph(x), model(x))
    fused = timm.utils.reparameterize_model(model)
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(fused)(x), fused(x))


@pytest.mark.parametrize('name', ALL_MODELS)
def test_fx_feature_extraction(name):
    torch.manual_seed(0)
    fx = timm.create_model(name, features_only=True, feature_cls='fx')
    torch.manual_seed(0)
    ref = timm.create_model(name, features_only=True)  # timm's default: forward_intermediates
    assert fx.feature_info.get_dicts() == ref.feature_info.get_dicts()
    x = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        fx.train(training)
        ref.train(training)
        with torch.no_grad():
            outs, refs = fx(x), ref(x)
        assert [o.shape for o in outs] == [r.shape for r in refs]
        for out, r in zip(outs, refs):
            torch.testing.assert_close(out, r)


@pytest.mark.parametrize('name', ['mobilenetv3_small_xsep_100', 'mobilenetv3_small_xsep_b_100',
                                  'mobilenetv3_small_xsep_p_100', 'mobilenetv3_small_xsep_ds7_100'])
def test_timm_reparameterize_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    model(torch.randn(8, 3, 32, 32))  # one training-mode pass: BN statistics that are not the identity
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    fused = timm.utils.reparameterize_model(model)
    with torch.no_grad():
        ref, out = model(x), fused(x)
        assert (out - ref).abs().max() <= 1e-5
        torch.testing.assert_close(torch.jit.script(fused)(x), out)
        torch.testing.assert_close(torch.jit.trace(fused, x)(x), out)
    xseps = [m for m in fused.modules() if isinstance(m, xsep_zoo.XSepConv)]
    assert xseps and all(m.fused for m in xseps)
    assert not any(m.fused for m in model.modules() if isinstance(m, xsep_zoo.XSepConv))  # a copy was fused
    with pytest.raises(RuntimeError, match='cannot be trained'):
        fused.train()


def test_fused_model_exports_to_onnx(tmp_path):
    import onnxruntime
    torch.manual_seed(0)
    model = timm.create_model('mobilenetv3_small_xsep_sympad_100')  # symmetric padding: the 3x3 form per group
    model(torch.randn(8, 3, 32, 32))
    fused = timm.utils.reparameterize_model(model.eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = fused(x)
    path = tmp_path / 'model.onnx'
    torch.onnx.export(fused, (x,), path, input_names=['input'], output_names=['logits'])
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {'input': x.numpy()})
    assert out.shape == (2, 10)
    assert abs(torch.from_numpy(out) - ref).max() <= 1e-5
