"Tests of clad.models.base and clad.models.stfpm on tiny inputs (CPU, random-init backbones, a few seconds)."
import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch

from clad.core import CladError
from clad.models.base import (MODEL_REGISTRY, AnomalyModel, GaussianBlur2d, autocast_context, build_model,
                              grad_scaler)
from clad.models.stfpm import AnomalyMapGenerator, STFPMLoss, STFPMModel


def make_cfg(**kw):
    "A stand-in for clad.config.Config with the attributes STFPM reads."
    d = dict(architecture='stfpm', backbone='resnet18', layers=['layer1', 'layer2', 'layer3'], pretrained=False,
             weights_path='', lr=0.4, amp=False, seed=0, img_size=64, crp_size=0,
             model_params=SimpleNamespace(momentum=0.9, weight_decay=1e-4))
    d.update(kw)
    return SimpleNamespace(**d)


@pytest.fixture(scope='module')
def batch():
    return {'image': torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))}


def state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_builds_stfpm():
    m = build_model(make_cfg(architecture='STFPM'))
    assert isinstance(m, STFPMModel) and isinstance(m, AnomalyModel)
    assert MODEL_REGISTRY['stfpm'] is STFPMModel and m.kind == 'trained' and not m.supports_cl_update
    with pytest.raises(CladError, match='unknown model'):
        build_model(make_cfg(architecture='nosuchmodel'))


def test_optimizer_honours_config():
    m = build_model(make_cfg(lr=0.123, model_params=SimpleNamespace(momentum=0.5, weight_decay=3e-3)))
    opt, sched = m.configure_optimizer()
    assert sched is None and isinstance(opt, torch.optim.SGD)
    assert (opt.defaults['lr'], opt.defaults['momentum'], opt.defaults['weight_decay']) == (0.123, 0.5, 3e-3)
    # only the student is optimised
    assert {id(p) for g in opt.param_groups for p in g['params']} == {id(p) for p in m.student.parameters()}


def test_predict_shapes(batch):
    m = build_model(make_cfg()).train()
    pred = m.predict(batch['image']); scores, maps = pred.scores, pred.maps
    assert scores.shape == (4,) and maps.shape == (4, 64, 64)
    assert scores.dtype == maps.dtype == torch.float32 and not scores.requires_grad
    assert torch.allclose(scores, maps.flatten(1).amax(1)) and (maps >= 0).all()
    assert m.training and m.student.training and not m.teacher.training  # mode restored, teacher always eval
    # non-square input: the map follows the input size
    assert m.predict(torch.randn(2, 3, 64, 96)).maps.shape == (2, 64, 96)


def test_training_loss_decreases_teacher_frozen(batch):
    m = build_model(make_cfg()).train()
    opt, _ = m.configure_optimizer()
    t0, s0 = copy.deepcopy(m.teacher.state_dict()), copy.deepcopy(m.student.state_dict())
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = m.training_step(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert state_equal(t0, m.teacher.state_dict())  # weights and BatchNorm statistics
    assert not state_equal(s0, m.student.state_dict())
    assert all(p.grad is None for p in m.teacher.parameters())
    v = m.validation_loss(batch)
    assert v.ndim == 0 and not v.requires_grad and m.training


def test_loss_zero_when_student_is_teacher(batch):
    m = build_model(make_cfg())
    m.student.net = copy.deepcopy(m.teacher.net)  # the teacher network itself (frozen extractors are BN-folded)
    assert m.validation_loss(batch).item() == pytest.approx(0, abs=1e-6)
    assert m.predict(batch['image']).maps.abs().max().item() == pytest.approx(0, abs=1e-6)


def test_loss_and_map_values():
    a = torch.randn(3, 8, 5, 5)
    assert STFPMLoss()([a, a], [a, -a]).item() == pytest.approx(2.0, abs=1e-5)
    assert STFPMLoss()([a], [5 * a]).item() == pytest.approx(0.0, abs=1e-6)
    amap = AnomalyMapGenerator()([a, a], [-a, -a], (10, 12))
    assert amap.shape == (3, 1, 10, 12) and torch.allclose(amap, torch.ones_like(amap) * 4, atol=1e-4)  # 2 x 2


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
    assert not state_equal(a.student.state_dict(), c.student.state_dict())


def test_state_dict_round_trip(batch, tmp_path):
    m = build_model(make_cfg(seed=1)).train()
    opt, _ = m.configure_optimizer()
    for _ in range(3):
        opt.zero_grad(); m.training_step(batch).backward(); opt.step()
    torch.save(m.state_dict(), tmp_path / 'ck.pt')
    n = build_model(make_cfg(seed=2))
    n.load_state_dict(torch.load(tmp_path / 'ck.pt'))
    pred = m.predict(batch['image']); s1, m1 = pred.scores, pred.maps
    pred = n.predict(batch['image']); s2, m2 = pred.scores, pred.maps
    assert torch.equal(s1, s2) and torch.equal(m1, m2)


def test_amp_helpers_noop_on_cpu(batch):
    assert isinstance(autocast_context('cpu', True), contextlib.nullcontext)
    assert not grad_scaler('cpu', True).is_enabled()
    on, off = build_model(make_cfg(amp=True)), build_model(make_cfg(amp=False))
    assert torch.equal(on.predict(batch['image']).maps, off.predict(batch['image']).maps)


def test_weights_info_and_sizes():
    m = build_model(make_cfg())
    assert m.weights_info()['backbone'] == 'resnet18' and m.weights_info()['source'] == 'random-init'
    assert m.memory_bytes() == 0
    assert m.param_bytes() == sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def test_lite0_pretrained_teacher_offline():
    m = build_model(make_cfg(backbone='tf_efficientnet_lite0', pretrained=True))
    assert m.weights_info()['source'].startswith('imagenet')
    pred = m.predict(torch.randn(2, 3, 64, 64)); scores, maps = pred.scores, pred.maps
    assert scores.shape == (2,) and maps.shape == (2, 64, 64) and torch.isfinite(maps).all()


def test_gaussian_blur():
    blur = GaussianBlur2d(sigma=2)
    assert blur.kernel_size == 17
    x = torch.zeros(1, 1, 40, 40); x[..., 20, 20] = 1
    y = blur(x)
    assert y.shape == x.shape and y.sum().item() == pytest.approx(1, abs=1e-4) and y.argmax().item() == 20 * 40 + 20
    assert torch.allclose(blur(torch.full((2, 30, 30), 5.)), torch.full((2, 30, 30), 5.), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_amp_training_step(batch):
    m = build_model(make_cfg(amp=True)).to('cuda').train()
    opt, _ = m.configure_optimizer()
    scaler = grad_scaler('cuda', True)
    loss = m.training_step({'image': batch['image'].cuda()})
    assert loss.dtype == torch.float32
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    pred = m.predict(batch['image'].cuda()); scores, maps = pred.scores, pred.maps
    assert scores.dtype == maps.dtype == torch.float32 and maps.shape == (4, 64, 64)


def test_channels_last_gives_same_predictions(batch):
    m = build_model(make_cfg())
    pred = m.predict(batch['image']); s1, m1 = pred.scores, pred.maps
    m = m.to(memory_format=torch.channels_last)
    pred = m.predict(batch['image'].contiguous(memory_format=torch.channels_last)); s2, m2 = pred.scores, pred.maps
    assert torch.allclose(m1, m2, atol=1e-5, rtol=1e-4) and torch.allclose(s1, s2, atol=1e-5, rtol=1e-4)
    loss = m.training_step(batch)
    loss.backward()
    assert torch.isfinite(loss)
