"Tests of clad.models.padim on tiny inputs (CPU, random-init ResNet-18, seconds)."
from types import SimpleNamespace

import pytest
import torch

from clad.config import load_config
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment
from clad.models.base import MODEL_REGISTRY, build_model
from clad.models.padim import PadimModel, accumulate_sums, gaussian_from_sums, mahalanobis, random_channel_subset


def tiny(update='replace', d=24, **kw):
    return PadimModel('resnet18', pretrained=False, d_reduced=d, memory_update=update, **kw)


def images(n, shift=0., seed=0, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.5 + shift


def test_registry_and_modes():
    cfg = SimpleNamespace(architecture='padim', backbone='resnet18', layers=['layer1', 'layer2', 'layer3'], pretrained=False,
                          weights_path='', amp=False, seed=0, sample_strategy='cl', cl=True,
                          model_params=SimpleNamespace(d_reduced=16))
    m = build_model(cfg)
    assert MODEL_REGISTRY['padim'] is PadimModel and m.kind == 'memory' and m.supports_cl_update
    assert m.memory_update == 'replace' and m.embedding.dim == 16  # the strategy sets the memory update, not the configuration
    for mode in ('budget', 'grow', 'replace'):
        m.set_memory_update(mode, budget=10); assert m.memory_update == mode
    with pytest.raises(CladError, match="unknown mode 'incremental'"): m.set_memory_update('incremental')
    with pytest.raises(CladError, match="unknown mode 'nope'"): PadimModel('resnet18', pretrained=False, memory_update='nope')


def test_channel_subset_seeded_and_capped():
    a = random_channel_subset(448, 100, seed=3)
    assert torch.equal(a, random_channel_subset(448, 100, seed=3)) and len(a.unique()) == 100
    with pytest.warns(UserWarning, match='keeping all'):
        assert len(random_channel_subset(50, 100)) == 50
    m = tiny(d=24)
    assert torch.equal(m.embedding.channel_idx, random_channel_subset(448, 24, seed=0))


def test_shapes_and_scores():
    m = tiny()
    m.fit([images(6, seed=1), {'image': images(4, seed=2)}])
    p = m.predict(images(3, seed=4)); s, a = p.scores, p.maps
    assert p.route is None and s.shape == (3,) and a.shape == (3, 64, 64) and s.dtype == a.dtype == torch.float32
    assert torch.allclose(s, a.flatten(1).amax(1)) and (a >= 0).all()
    assert m.predict(images(2, seed=4, size=64)[..., :64]).maps.shape == (2, 64, 64)
    far = m.predict(images(3, shift=3., seed=4)).scores
    assert (far > s).all()
    assert m.memory_bytes() == 256 * 24 * 4 + 256 * 24 * 24 * 4 + 2 * 8
    with pytest.raises(CladError, match='grid'): m.predict(images(1, size=96))
    with pytest.raises(CladError, match='before fit'): tiny().predict(images(1))
    with pytest.raises(CladError, match='no images'): tiny().fit([])


def test_sums_match_torch_cov():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, 2, 2, generator=g) * 3 + 10
    sx, sxx = torch.zeros(4, 6, dtype=torch.float64), torch.zeros(4, 6, 6, dtype=torch.float64)
    for b in x.split(7): accumulate_sums(sx, sxx, b)
    mean, A = gaussian_from_sums(30, sx, sxx, eps=0.01)
    v = x.reshape(30, 6, 4)[:, :, 1].double()
    inv = torch.linalg.inv(torch.cov(v.T) + 0.01 * torch.eye(6, dtype=torch.float64))
    assert torch.allclose((A[1] @ A[1].T).double(), inv, rtol=1e-4, atol=1e-5)
    d = mahalanobis(x[:2], mean, A)
    delta = (x[0, :, 0, 1].double() - v.mean(0))
    assert torch.allclose(d[0, 0, 1].double(), (delta @ inv @ delta).sqrt(), rtol=1e-4)


def test_incremental_equals_joint():
    tasks = [[images(4, shift=s, seed=10 * t + i) for i in range(3)] for t, s in enumerate((0., 1.5, -1.))]
    inc = tiny('budget')
    for t in tasks: inc.fit(t)
    joint = tiny('replace'); joint.fit([b for t in tasks for b in t])
    assert float(inc.n_seen) == 36
    assert torch.allclose(inc.means, joint.means, rtol=1e-5, atol=1e-5)
    scale = joint.whitens.abs().max()
    assert torch.allclose(inc.whitens / scale, joint.whitens / scale, atol=1e-5)
    x = images(3, shift=0.5, seed=99)
    assert torch.allclose(inc.predict(x).maps, joint.predict(x).maps, rtol=1e-4, atol=1e-4)
    assert inc.memory_bytes() > joint.memory_bytes()  # the float64 sums


def test_per_task_routing_and_naive_replaces():
    pt = tiny('grow')
    data = {0: -2., 1: 0., 2: 2.}
    for t, s in data.items(): pt.fit([images(8, shift=s, seed=t)])
    assert pt.num_gaussians == 3
    x = torch.cat([images(2, shift=s, seed=50 + t) for t, s in data.items()])
    assert pt.predict(x).route.tolist() == [0, 0, 1, 1, 2, 2]
    nv = tiny()
    nv.fit([images(8, shift=-2., seed=0)]); first = nv.means.clone()
    nv.fit([images(8, shift=2., seed=1)])
    fresh = tiny(); fresh.fit([images(8, shift=2., seed=1)])
    assert nv.num_gaussians == 1 and not torch.allclose(nv.means, first) and torch.equal(nv.means, fresh.means)


@pytest.mark.parametrize('mode', ['replace', 'budget', 'grow'])
def test_state_dict_round_trip(mode):
    m = tiny(mode)
    m.fit([images(5, seed=1)]); m.fit([images(5, shift=1., seed=2)])
    r = tiny(mode); r.load_state_dict(m.state_dict())
    x = images(3, seed=7)
    assert torch.equal(m.predict(x).maps, r.predict(x).maps) and m.memory_bytes() == r.memory_bytes()
    m.fit([images(4, seed=3)]); r.fit([images(4, seed=3)])  # resuming continues identically
    assert torch.equal(m.means, r.means) and torch.equal(m.whitens, r.whitens)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'cable', 'carpet'], n_train=6, n_test_good=2, n_test_defect=2, size=32)
    return root


@pytest.mark.parametrize('strategy,cl,rows', [('naive', True, 3), ('multi_task', True, 1), ('single_model', True, 3),
                                              ('cumulative', True, 3), ('cl', True, 3), ('cl', False, 3)])
def test_strategies_end_to_end(tiny_data, tmp_path, strategy, cl, rows):
    cfg = load_config('padim', overrides=dict(data_path=str(tiny_data), output_dir=str(tmp_path), img_size=32,
                                              backbone='resnet18', pretrained=False, d_reduced=16, device='cpu',
                                              gallery_size=1, sample_strategy=strategy, cl=cl))
    rec = Experiment(cfg, progress=False).run()
    assert rec['status'] == 'complete'
    assert len(rec['matrices']['image_auroc']) == rows and all(len(r) == 3 for r in rec['matrices']['image_auroc'])
    assert rec['cost']['additional_memory_mb'] > 0
    if strategy == 'cl' and not cl:  # three Gaussians, growing memory, routed
        per_step = rec['cost']['additional_memory_mb_per_step']
        assert per_step[0] < per_step[1] < per_step[2]
