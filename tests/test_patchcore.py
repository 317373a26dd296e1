"Tests of clad.models.patchcore on tiny inputs (CPU, random-init resnet18, a few seconds) and end to end through the loop."
from types import SimpleNamespace

import pytest
import torch

from clad.config import load_config
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment
from clad.models.base import MODEL_REGISTRY, build_model
from clad.models.patchcore import (PatchcoreModel, jl_min_dim, kcenter_greedy, nearest_neighbors,
                                   reweighted_score)


def naive_kcenter(X, n, start):
    "Reference greedy k-center: recompute every distance to every centre at every step."
    sel = [start]
    for _ in range(n - 1):
        d = torch.cdist(X, X[sel]).min(1).values
        d[sel] = -1
        sel.append(int(d.argmax()))
    return torch.tensor(sel)


def images(n, seed=0, size=64, shift=0.):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.5 + shift


def tiny(update='replace', **kw):
    return PatchcoreModel('resnet18', pretrained=False, memory_update=update, **kw)


def test_kcenter_matches_naive_and_covers():
    X = torch.rand(400, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for start in (0, 123):
        sel = kcenter_greedy(X, 30, eps=None, start=start)
        assert len(set(sel.tolist())) == 30
        assert torch.equal(sel, naive_kcenter(X, 30, start))
        for block in (1, 5, 1000):
            assert torch.equal(kcenter_greedy(X, 30, eps=None, start=start, block=block), sel)
        cov = [float(torch.cdist(X, X[sel[:k]]).min(1).values.max()) for k in range(1, 31)]
        assert all(a >= b for a, b in zip(cov, cov[1:]))
        assert cov[-1] < 0.5 * cov[0]


def test_kcenter_edge_cases_and_seeding():
    assert kcenter_greedy(torch.zeros(7, 3), 7, eps=None).sort().values.tolist() == list(range(7))
    assert kcenter_greedy(torch.rand(5, 2), 9, eps=None).sort().values.tolist() == list(range(5))
    assert kcenter_greedy(torch.rand(5, 2), 0).numel() == 0
    W = torch.randn(2000, 500)
    g = lambda s: torch.Generator().manual_seed(s)
    a, b = kcenter_greedy(W, 50, g(0)), kcenter_greedy(W, 50, g(0))
    assert torch.equal(a, b) and len(set(a.tolist())) == 50
    assert not torch.equal(a, kcenter_greedy(W, 50, g(1)))
    assert jl_min_dim(50176, 0.9) == 267
    with pytest.raises(CladError, match='coreset_eps'): jl_min_dim(10, 0.)
    with pytest.raises(CladError, match='features'): kcenter_greedy(torch.rand(3), 2)


def test_nearest_neighbors_and_score():
    Q, B = torch.randn(40, 6), torch.randn(25, 6)
    d, i = nearest_neighbors(Q, B, k=2, sizes=[5, 20], max_elements=50)
    assert d.shape == i.shape == (40, 2, 2)
    assert torch.allclose(d[:, 0, 0], torch.cdist(Q, B[:5]).min(1).values, atol=1e-4)
    assert torch.equal(i[:, 1, 0], torch.cdist(Q, B[5:]).argmin(1) + 5)
    ps, loc = d[:, 0, 0].reshape(4, 10), i[:, 0, 0].reshape(4, 10)
    s1 = reweighted_score(ps, loc, Q.reshape(4, 10, 6), B[:5], 1)
    assert torch.allclose(s1, ps.amax(1))
    s9 = reweighted_score(ps, loc, Q.reshape(4, 10, 6), B[:5], 9)
    assert ((s9 > 0) & (s9 <= s1)).all()


def test_shapes_fit_predict():
    m = tiny()
    assert m.kind == 'memory' and m.supports_cl_update and MODEL_REGISTRY['patchcore'] is PatchcoreModel
    assert m.embed(images(2)).shape == (2, 384, 8, 8)
    m.fit([{'image': images(3)}])
    assert m.bank_sizes.tolist() == [int(3 * 64 * 0.1)] and m.memory_bytes() == 19 * 384 * 4 + 8
    p = m.predict(images(2, seed=1, size=96))
    assert p.scores.shape == (2,) and p.maps.shape == (2, 96, 96) and p.scores.dtype == p.maps.dtype == torch.float32
    assert p.route.tolist() == [0, 0]


def test_memory_updates_and_routing():
    tasks = [images(4, seed=10 + t, shift=3. * t) for t in range(3)]
    mr, ma, mb = tiny('replace'), tiny('grow'), tiny('budget', mem_size_cl=50)
    for t, x in enumerate(tasks):
        for m in (mr, ma, mb):
            m.begin_task(t); m.fit([x])
        assert mb.memory_bank.shape[0] <= 50 and mb.memory_bank.shape[0] == sum(mb.bank_sizes.tolist())
        assert len(ma.bank_sizes) == t + 1 and len(mb.bank_sizes) == t + 1
    assert mb.bank_sizes.tolist() == [16, 16, 16]
    assert mr.bank_sizes.tolist() == [25] and ma.bank_sizes.tolist() == [25, 25, 25]
    assert torch.equal(mr.memory_bank, ma.banks[2])  # naive keeps only the last task
    assert ma.memory_bytes() > mr.memory_bytes()
    for m in (ma, mb):
        for t in range(3):
            assert m.predict(images(3, seed=30 + t, shift=3. * t)).route.tolist() == [t] * 3


def test_state_dict_round_trip():
    m = tiny('grow')
    for t in range(2):
        m.begin_task(t); m.fit([images(3, seed=t, shift=2. * t)])
    fresh = tiny('grow')
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.bank_sizes, m.bank_sizes) and torch.equal(fresh.memory_bank, m.memory_bank)
    x = images(4, seed=9, shift=2.)
    p1, p2 = m.predict(x), fresh.predict(x)
    assert torch.equal(p1.scores, p2.scores) and torch.equal(p1.maps, p2.maps) and torch.equal(p1.route, p2.route)


def test_from_config():
    def cfg(**kw):
        d = dict(architecture='patchcore', backbone='resnet18', layers=['layer2', 'layer3'], pretrained=False,
                 weights_path='', amp=False, seed=0, sample_strategy='naive', cl=True, mem_size_cl=77,
                 model_params=SimpleNamespace(f_coreset=0.05, coreset_eps=0.5, num_neighbors=3))
        d.update(kw); return SimpleNamespace(**d)
    m = build_model(cfg())
    assert (m.memory_update, m.f_coreset, m.coreset_eps, m.num_neighbors) == ('replace', 0.05, 0.5, 3)
    assert build_model(cfg(sample_strategy='cl')).memory_update == 'replace'  # the strategy sets it, not the configuration
    m.set_memory_update('budget', budget=77)
    assert (m.memory_update, m.mem_size_cl) == ('budget', 77)
    with pytest.raises(CladError, match='patch budget'): m.set_memory_update('budget')
    with pytest.raises(CladError, match="unknown mode 'append'"): tiny('append')


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'cable', 'carpet'], n_train=6, n_test_good=2, n_test_defect=2, size=64)
    return root


TINY = dict(img_size=64, backbone='resnet18', pretrained=False, gallery_size=1, device='cpu', num_tasks=2, mem_size_cl=200)


@pytest.mark.parametrize('strategy,cl', [('naive', True), ('multi_task', True), ('single_model', True),
                                         ('cumulative', True), ('cl', True), ('cl', False)])
def test_strategies_end_to_end(tiny_data, tmp_path, strategy, cl):
    cfg = load_config('patchcore', overrides=dict(TINY, data_path=str(tiny_data), output_dir=str(tmp_path),
                                                  sample_strategy=strategy, cl=cl))
    exp = Experiment(cfg, progress=False, log=lambda *a: None)
    rec = exp.run()
    assert rec['status'] == 'complete'
    m = exp.models[-1]
    assert len(m.bank_sizes) == (2 if strategy == 'cl' else 1)
    if strategy == 'cl' and cl: assert m.memory_bank.shape[0] <= 200
    # resume: a fresh experiment restores the banks from the checkpoint
    again = Experiment(cfg, progress=False, log=lambda *a: None)
    assert again.load_checkpoint()
    assert torch.equal(again.models[-1].memory_bank, m.memory_bank)
