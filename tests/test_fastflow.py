"Tests of clad.models.fastflow on tiny inputs (CPU, random-init resnet18 at 64 px; end-to-end runs on tiny data)."
import copy
from types import SimpleNamespace

import pytest
import torch

from clad.config import load_config
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment
from clad.models.base import MODEL_REGISTRY, AnomalyModel, build_model
from clad.models.fastflow import (AffineCouplingBlock, AnomalyMapGenerator, FastFlowBlock, FastflowLoss,
                                  FastflowModel)


def make_cfg(**kw):
    "A stand-in for clad.config.Config with the attributes FastFlow reads."
    mp = dict(flow_steps=2, hidden_ratio=1.0, conv3x3_only=False, fast_flow_normalize=True, weight_decay=1e-5)
    mp.update(kw.pop('mp', {}))
    d = dict(architecture='fastflow', backbone='resnet18', layers=['layer1', 'layer2', 'layer3'], pretrained=False,
             weights_path='', lr=1e-3, amp=False, seed=0, img_size=64, crp_size=0, model_params=SimpleNamespace(**mp))
    d.update(kw)
    return SimpleNamespace(**d)


@pytest.fixture(scope='module')
def batch():
    return {'image': torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))}


def state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def n_params(mod):
    return sum(p.numel() for p in mod.parameters())


def test_registry_and_shapes(batch):
    m = build_model(make_cfg(architecture='FastFlow'))
    assert isinstance(m, FastflowModel) and isinstance(m, AnomalyModel)
    assert MODEL_REGISTRY['fastflow'] is FastflowModel and m.kind == 'trained' and not m.supports_cl_update
    zs, jacs = m(batch['image'])
    assert [tuple(z.shape) for z in zs] == [(4, 64, 16, 16), (4, 128, 8, 8), (4, 256, 4, 4)]
    assert all(j.shape == (4,) for j in jacs) and all(z.dtype == torch.float32 for z in zs)
    m.train()
    pred = m.predict(batch['image']); scores, maps = pred.scores, pred.maps
    assert scores.shape == (4,) and maps.shape == (4, 64, 64) and scores.dtype == maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps <= 0).all() and (maps >= -1).all()
    assert torch.allclose(scores, maps.flatten(1).amax(1))
    assert m.training and not m.feature_extractor.training  # mode restored; backbone always eval
    with pytest.raises(CladError, match='64×64'):
        m.predict(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize('channels', [4, 5])
def test_coupling_invertible_and_logdet_matches_jacobian(channels):
    torch.manual_seed(0)
    blk = AffineCouplingBlock(channels, kernel_size=3, hidden_ratio=1.0)
    with torch.no_grad():
        blk.global_scale.add_(torch.randn_like(blk.global_scale))
        blk.global_offset.normal_()
        for p in blk.subnet.parameters(): p.mul_(3)  # larger log-scales: the clamp matters
    x = torch.randn(2, channels, 3, 3)
    y, ld = blk(x)
    xb, ldi = blk(y, rev=True)
    assert torch.allclose(xb, x, atol=1e-4) and torch.allclose(ldi, -ld, atol=1e-4)
    for i in range(2):
        J = torch.autograd.functional.jacobian(lambda v: blk(v.reshape(1, channels, 3, 3))[0].flatten(), x[i].flatten())
        assert torch.linalg.slogdet(J.double())[1].item() == pytest.approx(ld[i].item(), abs=1e-3)
    # whole flow: inverse and log-dets add up
    flow = FastFlowBlock(channels, flow_steps=3)
    z, lj = flow(x)
    xb, lji = flow(z, rev=True)
    assert torch.allclose(xb, x, atol=1e-4) and torch.allclose(lji, -lj, atol=1e-3)


def test_loss_decreases_layernorm_trains_backbone_frozen(batch):
    m = build_model(make_cfg()).train()
    opt, sched = m.configure_optimizer()
    assert sched is None and isinstance(opt, torch.optim.Adam)
    assert (opt.defaults['lr'], opt.defaults['weight_decay']) == (1e-3, 1e-5)
    trainable = {id(p) for g in opt.param_groups for p in g['params']}
    assert trainable == {id(p) for p in m.norms.parameters()} | {id(p) for p in m.fast_flow_blocks.parameters()}
    b0, n0 = copy.deepcopy(m.feature_extractor.state_dict()), copy.deepcopy(m.norms.state_dict())
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = m.training_step(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2 * abs(losses[0]), losses
    assert state_equal(b0, m.feature_extractor.state_dict())
    assert all(not torch.equal(v, m.norms.state_dict()[k]) for k, v in n0.items())  # LayerNorm weight and bias move
    assert all(p.grad is None for p in m.feature_extractor.parameters())
    v = m.validation_loss(batch)
    assert v.ndim == 0 and not v.requires_grad and m.training


def test_config_changes_architecture():
    base = build_model(make_cfg())
    steps4 = build_model(make_cfg(mp=dict(flow_steps=4)))
    assert [len(b.steps) for b in base.fast_flow_blocks] == [2, 2, 2]
    assert [len(b.steps) for b in steps4.fast_flow_blocks] == [4, 4, 4]
    assert n_params(steps4.fast_flow_blocks) == 2 * n_params(base.fast_flow_blocks)
    k = lambda m: [s.subnet[0].kernel_size[0] for s in m.fast_flow_blocks[0].steps]
    assert k(steps4) == [3, 1, 3, 1]
    c3 = build_model(make_cfg(mp=dict(flow_steps=4, conv3x3_only=True)))
    assert k(c3) == [3, 3, 3, 3] and n_params(c3.fast_flow_blocks) > n_params(steps4.fast_flow_blocks)
    h2 = build_model(make_cfg(mp=dict(hidden_ratio=2.0)))
    assert h2.fast_flow_blocks[0].steps[0].subnet[0].out_channels == 2 * base.fast_flow_blocks[0].steps[0].subnet[0].out_channels
    assert n_params(h2.fast_flow_blocks) > n_params(base.fast_flow_blocks)
    nonorm = build_model(make_cfg(mp=dict(fast_flow_normalize=False)))
    assert n_params(nonorm.norms) == 0 and n_params(base.norms) == 2 * (64 * 256 + 128 * 64 + 256 * 16)
    two = build_model(make_cfg(layers=['layer2', 'layer3'], img_size=80, crp_size=64))
    assert len(two.fast_flow_blocks) == 2 and two.input_size == (64, 64)
    with pytest.raises(CladError, match='flow_steps'):
        build_model(make_cfg(mp=dict(flow_steps=0)))
    with pytest.raises(CladError, match='hidden_ratio'):
        build_model(make_cfg(mp=dict(hidden_ratio=0.001)))
    with pytest.raises(CladError, match='model_params'):
        build_model(make_cfg(model_params=None))


def test_loss_and_map_values():
    z = torch.ones(3, 2, 2, 2)
    assert FastflowLoss()([z, 2 * z], [torch.ones(3), torch.full((3,), 2.)]).item() == pytest.approx(17.0)
    zb = torch.zeros(2, 4, 4, 4)
    zb[:, :, 1, 2] = 1e4  # far in the tail: the map saturates at 0 but stays finite
    amap = AnomalyMapGenerator()([zb, torch.zeros(2, 4, 4, 4)], (4, 4))
    assert amap.shape == (2, 1, 4, 4) and torch.isfinite(amap).all()
    assert amap[0, 0, 1, 2].item() == pytest.approx(-0.5) and amap[0, 0, 0, 0].item() == pytest.approx(-1.0)


def test_build_reproducible_and_independent_of_global_rng():
    torch.manual_seed(1)
    a = build_model(make_cfg(seed=7))
    torch.manual_seed(2)
    r = torch.rand(1)
    torch.manual_seed(2)
    b = build_model(make_cfg(seed=7))
    assert state_equal(a.state_dict(), b.state_dict())
    assert torch.equal(torch.rand(1), r)  # building did not consume the global RNG
    c = build_model(make_cfg(seed=8))
    assert not state_equal(a.fast_flow_blocks.state_dict(), c.fast_flow_blocks.state_dict())


def test_state_dict_round_trip(batch, tmp_path):
    m = build_model(make_cfg(seed=1)).train()
    opt, _ = m.configure_optimizer()
    for _ in range(3):
        opt.zero_grad(); m.training_step(batch).backward(); opt.step()
    torch.save(m.state_dict(), tmp_path / 'ck.pt')
    n = build_model(make_cfg(seed=2))  # other permutations and weights: all restored from the file
    n.load_state_dict(torch.load(tmp_path / 'ck.pt'))
    pred = m.predict(batch['image']); s1, m1 = pred.scores, pred.maps
    pred = n.predict(batch['image']); s2, m2 = pred.scores, pred.maps
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    assert any(k.endswith('perm') for k in m.state_dict())


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'cable'], n_train=8, n_test_good=3, n_test_defect=3, size=64)
    return root


@pytest.mark.parametrize('strategy', ['naive', 'replay'])
def test_experiment_end_to_end(tiny_data, tmp_path, strategy):
    cfg = load_config('fastflow', overrides=dict(
        data_path=str(tiny_data), output_dir=str(tmp_path), sample_strategy=strategy, img_size=64, backbone='resnet18',
        pretrained=False, num_epochs=1, num_tasks=2, batch_size=4, mem_size=6, gallery_size=1, device='cpu',
        flow_steps=2))
    assert cfg.model_params.flow_steps == 2 and cfg.model_params.fast_flow_normalize
    rec = Experiment(cfg, progress=False, log=lambda *a: None).run()
    assert rec['status'] == 'complete'
    assert len(rec['matrices']['image_auroc']) == 2 and all(len(r) == 2 for r in rec['matrices']['image_auroc'])
    assert all(v is not None for r in rec['matrices']['image_auroc'] for v in r)
