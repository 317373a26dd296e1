"""CFA: descriptor, loss, k-means, the equal-weight per-task bank, checkpoints and end-to-end runs."""
import copy
from types import SimpleNamespace

import pytest
import torch

from clad.config import load_config
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment
from clad.models.base import build_model
from clad.models.cfa import CFAModel, CFALoss, CoordConv2d, add_coords, cfa_patch_scores, kmeans, squared_distances


def tiny(seed=0, **kw):
    return CFAModel('resnet18', pretrained=False, seed=seed, **kw)


def loader_of(x, bs=4):
    return [{'image': x[i:i + bs]} for i in range(0, len(x), bs)]


@pytest.fixture(scope='module')
def imgs():
    return torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_shapes(imgs):
    m = tiny()
    test_feats = m.patch_features(imgs[:2])
    assert test_feats.shape == (2, 448, 16, 16) and test_feats.dtype == torch.float32
    assert m(imgs[:2]).shape == (2, 448, 16, 16)
    assert tiny(gamma_d=4)(imgs[:1]).shape == (1, 112, 16, 16)
    with pytest.raises(CladError, match='begin_task'): m.predict(imgs[:1])
    m.begin_task(0, loader_of(imgs))
    assert m.bank.shape == (256, 448)
    p = m.predict(imgs[:3]); s, a = p.scores, p.maps
    assert p.route is None and s.shape == (3,) and a.shape == (3, 64, 64) and torch.isfinite(a).all()
    assert torch.allclose(s, a.flatten(1).amax(1))


def test_coordconv_adds_two_coordinate_channels():
    x = torch.randn(2, 5, 3, 4)
    xc = add_coords(x)
    assert xc.shape == (2, 7, 3, 4) and torch.equal(xc[:, :5], x)
    assert torch.allclose(xc[0, 5, :, 0], torch.tensor([-1., 0., 1.]))
    assert torch.allclose(xc[0, 6, 0], torch.linspace(-1, 1, 4))
    assert CoordConv2d(5, 9).conv.weight.shape == (9, 7, 1, 1)
    assert tiny().descriptor.conv.in_channels == 448 + 2


def test_loss_decreases_and_radius_is_learnable(imgs):
    m = tiny(lr=1e-4).train()
    m.begin_task(0, loader_of(imgs))
    opt, sched = m.configure_optimizer()
    assert sched is None and opt.defaults['amsgrad'] and opt.defaults['weight_decay'] == 5e-4
    assert m.radius.requires_grad and any(p is m.radius for g in opt.param_groups for p in g['params'])
    frozen = copy.deepcopy(m.extractor.state_dict())
    losses = []
    for _ in range(6):
        opt.zero_grad(); loss = m.training_step({'image': imgs[:4]}); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < 0.98 * losses[0], losses
    assert m.radius.item() != pytest.approx(1e-5)
    assert all(torch.equal(v, m.extractor.state_dict()[k]) for k, v in frozen.items())


def test_loss_values():
    crit = CFALoss()
    d = torch.tensor([[[0.1, 0.2, 0.3, 5., 6., 7., 8.]]])
    assert crit(d, torch.tensor([0.5])).item() == pytest.approx(1000 * 0.05 / 3, rel=1e-4)
    d = torch.tensor([[[0.1, 0.1, 0.1, 0.1, 0.12, 0.2, 9.]]])  # hard negatives inside r² - α are repelled
    assert crit(d, torch.tensor([0.5])).item() == pytest.approx(1000 * 0.08 / 3, rel=1e-4)
    s = cfa_patch_scores(torch.tensor([[[4., 4., 4.]]]))
    assert s.item() == pytest.approx(2 / 3, rel=1e-5)


def test_kmeans_seeded_deterministic_and_size():
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    a, b = kmeans(x, 64, seed=5), kmeans(x, 64, seed=5)
    assert torch.equal(a, b) and a.shape == (64, 16)
    assert not torch.equal(a, kmeans(x, 64, seed=6))
    assert torch.equal(kmeans(x, 256), x)
    m1, m2 = tiny(gamma_c=4), tiny(gamma_c=4)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m1.begin_task(0, loader_of(x)); m2.begin_task(0, loader_of(x))
    assert m1.bank.shape == (16 * 16 // 4, 448) and torch.equal(m1.bank, m2.bank)


def test_bank_equal_weight_per_task_not_per_batch():
    g = torch.Generator().manual_seed(2)
    t0, t1 = torch.randn(4, 3, 64, 64, generator=g), torch.randn(12, 3, 64, 64, generator=g) + 1
    m = tiny(memory_update='grow')
    m.begin_task(0, loader_of(t0)); m.begin_task(1, loader_of(t1))  # 1 batch, then 3 batches
    p0, p1 = m.patch_features(t0).mean(0), m.patch_features(t1).mean(0)
    with torch.no_grad():
        bank = lambda mean: m.descriptor(mean[None])[0].flatten(1).T
        plain = (bank(p0) + bank(p1)) / 2  # mean of the two task means
        batch_weighted = (bank(p0) + 3 * bank(p1)) / 4  # the original code's running mean over batches
    assert torch.allclose(m.bank, plain, atol=1e-4)
    assert (m.bank - batch_weighted).abs().max() > 1e-2
    assert m.task_ids.tolist() == [0, 1] and m.task_means.shape == (2, 448, 16, 16)


def test_bank_recomputed_with_current_descriptor():
    g = torch.Generator().manual_seed(3)
    t0, t1 = torch.randn(4, 3, 64, 64, generator=g), torch.randn(4, 3, 64, 64, generator=g)
    m = tiny(memory_update='grow')
    m.begin_task(0, loader_of(t0))
    with torch.no_grad():
        m.descriptor.conv.weight.add_(0.05 * torch.randn_like(m.descriptor.conv.weight))
        m.descriptor.conv.bias.add_(1.0)
    m.begin_task(1, loader_of(t1))
    with torch.no_grad():
        p = (m.patch_features(t0).mean(0) + m.patch_features(t1).mean(0)) / 2
        expected = m.descriptor(p[None])[0].flatten(1).T
    assert torch.allclose(m.bank, expected, atol=1e-4)


def test_replace_mode_keeps_only_current_step(imgs):
    m = tiny()
    m.begin_task(0, loader_of(imgs[:4])); m.begin_task(1, loader_of(imgs[4:]))
    assert m.task_ids.tolist() == [1] and m.task_means.shape[0] == 1


def test_state_dict_round_trip(imgs, tmp_path):
    m = tiny(memory_update='grow')
    m.begin_task(0, loader_of(imgs[:4])); m.begin_task(1, loader_of(imgs[4:]))
    torch.save(m.state_dict(), tmp_path / 'cfa.pt')
    fresh = tiny(seed=9, memory_update='grow')
    fresh.load_state_dict(torch.load(tmp_path / 'cfa.pt', weights_only=True))
    assert fresh.task_ids.tolist() == [0, 1] and torch.equal(fresh.bank, m.bank) and torch.equal(fresh.radius, m.radius)
    assert torch.equal(fresh.predict(imgs[:2]).maps, m.predict(imgs[:2]).maps)
    assert fresh.memory_bytes() == m.memory_bytes() > 0


def test_from_config_honours_fields():
    cfg = SimpleNamespace(architecture='cfa', backbone='resnet18', layers=['layer1', 'layer2'], pretrained=False,
                          weights_path='', lr=5e-3, amp=False, seed=1, sample_strategy='replay',
                          model_params=SimpleNamespace(gamma_c=2, gamma_d=2, weight_decay=1e-2))
    m = build_model(cfg)
    assert (m.memory_update, m.gamma_c, m.gamma_d, m.layers) == ('replace', 2, 2, ['layer1', 'layer2'])  # the strategy sets it
    assert m.descriptor.conv.out_channels == (64 + 128) // 2
    opt, _ = m.configure_optimizer()
    assert (opt.defaults['lr'], opt.defaults['weight_decay']) == (5e-3, 1e-2)
    m.set_memory_update('grow'); assert m.memory_update == 'grow'
    with pytest.raises(CladError, match="memory update 'budget' is not supported; it supports replace, grow"): m.set_memory_update('budget', 10)
    real = load_config('cfa', overrides=dict(device='cpu'))
    assert (real.model_params.gamma_c, real.model_params.gamma_d, real.model_params.weight_decay, real.lr) == (1, 1, 5e-4, 1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_amp(imgs):
    m = tiny(amp=True).cuda().train()
    m.begin_task(0, loader_of(imgs.cuda()))
    loss = m.training_step({'image': imgs[:4].cuda()})
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    a = m.predict(imgs[:2].cuda()).maps
    assert a.dtype == torch.float32 and torch.isfinite(a).all()


TINY = dict(img_size=64, backbone='resnet18', pretrained=False, num_epochs=1, batch_size=4, mem_size=4, gallery_size=1,
            device='cpu', num_tasks=2, eval_batch_size=8)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'carpet'], n_train=8, n_test_good=2, n_test_defect=2, size=64)
    return root


@pytest.mark.parametrize('strategy', ['naive', 'replay'])
def test_end_to_end(tiny_data, tmp_path, strategy):
    cfg = load_config('cfa', overrides=dict(TINY, data_path=str(tiny_data), output_dir=str(tmp_path), sample_strategy=strategy))
    rec = Experiment(cfg, progress=False, log=lambda *_: None).run()
    assert rec['status'] == 'complete'
    exp = Experiment(cfg, progress=False, log=lambda *_: None)
    assert exp.load_checkpoint()
    m = exp.models[-1]
    assert m.task_ids.tolist() == ([0, 1] if strategy == 'replay' else [1])
