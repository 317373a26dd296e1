"Tests of clad.models.draem on tiny inputs (CPU, widths 8/8, 64 px)."
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clad.config import load_config
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment
from clad.models.base import MODEL_REGISTRY, AnomalyModel, build_model
from clad.models.draem import (AnomalyGenerator, DRAEMModel, DraemLoss, ProceduralTextures, blend, image_score,
                               make_texture_source, perlin_mask, perlin_noise)


def make_cfg(**kw):
    "A stand-in for clad.config.Config with the attributes DRAEM reads."
    mp = dict(base_width=8, disc_width=8, beta_min=0.1, beta_max=1.0)
    mp.update(kw.pop('model_params', {}))
    d = dict(architecture='draem', lr=1e-3, num_epochs=10, amp=False, seed=0, anomaly_source='procedural',
             anomaly_source_path='/nonexistent/dtd', model_params=SimpleNamespace(**mp))
    d.update(kw)
    return SimpleNamespace(**d)


def tiny(**kw): return build_model(make_cfg(**kw))


@pytest.fixture(scope='module')
def batch():
    return {'image': torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 'path': ['a', 'b', 'c', 'd']}


@pytest.fixture(scope='module')
def dtd_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('dtd')
    for c in ('banded', 'dotted'):
        (d / 'images' / c).mkdir(parents=True)
        for k in range(3):
            arr = (np.random.default_rng(k).random((90, 70, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(d / 'images' / c / f'{c}_{k}.jpg')
    return d


def test_registry_and_shapes(batch):
    m = tiny()
    assert isinstance(m, DRAEMModel) and isinstance(m, AnomalyModel) and MODEL_REGISTRY['draem'] is DRAEMModel
    assert m.kind == 'trained' and not m.supports_cl_update and m.memory_bytes() == 0
    rec, logits = m(batch['image'])
    assert rec.shape == (4, 3, 64, 64) and logits.shape == (4, 2, 64, 64)
    pred = m.train().predict(batch['image']); scores, maps = pred.scores, pred.maps
    assert scores.shape == (4,) and maps.shape == (4, 64, 64) and scores.dtype == maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1 and m.training  # softmax probabilities; mode restored
    assert m.predict(torch.rand(2, 3, 40, 72)).maps.shape == (2, 40, 72)  # sides not multiples of 32
    # module names are anomalib's (its DraemModel state dict loads into ours)
    keys = set(m.state_dict())
    assert 'reconstructive_subnetwork.encoder.block1.0.weight' in keys
    assert 'discriminative_subnetwork.decoder_segment.fin_out.0.weight' in keys
    assert {k.split('.')[0] for k in keys} == {'reconstructive_subnetwork', 'discriminative_subnetwork'}


def test_perlin_masks_binary_and_reproducible():
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([perlin_mask((64, 64), g) for _ in range(40)])
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    cover = masks.mean((1, 2, 3))
    assert ((cover > 0) & (cover < 1)).sum() > 20  # both values present in most masks
    a = [perlin_mask((64, 64), torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    # the noise itself: bounded, zero on the lattice, reproducible
    n = perlin_noise((64, 64), (4, 8), torch.Generator().manual_seed(1))
    assert n.abs().max() <= 1.01 and torch.allclose(n[::16, ::8], torch.zeros(4, 8), atol=1e-6)
    assert torch.equal(n, perlin_noise((64, 64), (4, 8), torch.Generator().manual_seed(1)))


def test_clean_rate_and_beta_range():
    x = torch.rand(160, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gen = AnomalyGenerator(ProceduralTextures(), beta=(0.1, 1.0))
    aug, masks = gen(x, torch.Generator().manual_seed(0))
    rate = gen.last_chosen.float().mean().item()
    assert 0.38 < rate < 0.62, rate
    clean = ~gen.last_chosen
    assert torch.equal(aug[clean], x[clean]) and masks[clean].sum() == 0
    b = gen.last_beta[gen.last_chosen]
    assert b.min() >= 0.1 and b.max() <= 1.0 and torch.isnan(gen.last_beta[clean]).all()
    gen = AnomalyGenerator(ProceduralTextures(), beta=(0.3, 0.35))
    gen(x[:40], torch.Generator().manual_seed(1))
    b = gen.last_beta[gen.last_chosen]
    assert b.min() >= 0.3 and b.max() <= 0.35
    # the blend: β of the image and 1−β of the texture inside the mask, the image outside
    img, tex, m = torch.ones(3, 4, 4), torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)
    m[:, :2] = 1
    out = blend(img, tex, m, 0.3)
    assert torch.allclose(out[:, :2], torch.full((3, 2, 4), 0.3)) and torch.equal(out[:, 2:], img[:, 2:])
    with pytest.raises(CladError, match='beta_min'):
        AnomalyGenerator(ProceduralTextures(), beta=(0.9, 0.1))


def test_beta_from_config():
    m = tiny(model_params=dict(beta_min=0.2, beta_max=0.5))
    assert m.generator_.beta == (0.2, 0.5)


def test_procedural_needs_no_folder():
    m = tiny(anomaly_source='procedural', anomaly_source_path='/definitely/not/here')
    assert m.weights_info()['anomaly_source'] == 'procedural'
    tex = make_texture_source('procedural').sample(torch.Generator().manual_seed(0), (32, 32))
    assert tex.shape == (3, 32, 32) and 0 <= tex.min() and tex.max() <= 1


def test_dtd_missing_raises_with_procedural_hint(tmp_path):
    with pytest.raises(CladError, match='anomaly_source: procedural'):
        tiny(anomaly_source='dtd', anomaly_source_path=str(tmp_path / 'nodtd'))
    with pytest.raises(CladError, match='anomaly_source: procedural'):
        build_model(load_config('draem', overrides=dict(anomaly_source='dtd', anomaly_source_path=str(tmp_path / 'nodtd'))))


def test_embedded_defaults_use_procedural_and_say_so(capsys):
    cfg = load_config('draem', overrides=dict(base_width=4, disc_width=2))
    assert cfg.anomaly_source == 'procedural' and cfg.sources['anomaly_source'].endswith('models/draem.json')
    m = build_model(cfg)
    assert m.weights_info()['anomaly_source'] == 'procedural'
    assert 'DRAEM anomaly source: procedural' in capsys.readouterr().out


def test_paper_config_keeps_dtd_and_fails_clearly_without_it(tmp_path):
    cfg = load_config(run_json='test_draem_ideal_replay.json',
                      overrides=dict(anomaly_source_path=str(tmp_path / 'nodtd'), base_width=4, disc_width=2))
    assert cfg.anomaly_source == 'dtd' and cfg.sources['anomaly_source'].endswith('test_draem_ideal_replay.json')
    with pytest.raises(CladError, match='no texture images found') as e:
        build_model(cfg)
    assert str(tmp_path / 'nodtd') in str(e.value) and 'Describable Textures' in str(e.value)


def test_dtd_source(dtd_dir, batch):
    m = tiny(anomaly_source='dtd', anomaly_source_path=str(dtd_dir))
    info = m.weights_info()['anomaly_source']
    assert info.startswith('dtd:') and str(dtd_dir) in info and info.endswith('(6 images)')
    loss = m.train().training_step(batch)
    assert torch.isfinite(loss)


def test_loss_decreases(batch):
    torch.manual_seed(0)
    m = tiny(lr=1e-3).train()
    opt, _ = m.configure_optimizer()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = m.training_step(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_loss_terms():
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    msk = torch.zeros(2, 1, 32, 32)
    msk[..., 4:12, 4:12] = 1
    p = DraemLoss().parts(img, img, msk, torch.cat([1 - msk, msk], 1) * 40 - 20)
    assert p['l2'] < 1e-8 and p['ssim'] < 1e-5 and p['focal'] < 1e-6
    assert math.isclose(DraemLoss().parts(img, img, msk, torch.zeros(2, 2, 32, 32))['focal'].item(), 0.25 * math.log(2), rel_tol=1e-5)


def test_scheduler_resets_per_configure_optimizer():
    m = tiny(lr=1e-3, num_epochs=10)
    opt, sched = m.configure_optimizer()
    assert isinstance(opt, torch.optim.Adam) and isinstance(sched, torch.optim.lr_scheduler.MultiStepLR)
    assert sorted(sched.milestones) == [8, 9] and sched.gamma == 0.2
    params = {id(p) for g in opt.param_groups for p in g['params']}
    assert params == {id(p) for p in m.parameters()} and len(opt.param_groups) == 2
    for _ in range(10):
        opt.step()
        sched.step()
    assert math.isclose(opt.param_groups[0]['lr'], 1e-3 * 0.04, rel_tol=1e-9)
    opt2, sched2 = m.configure_optimizer()
    assert opt2 is not opt and [g['lr'] for g in opt2.param_groups] == [1e-3, 1e-3] and sched2.last_epoch == 0


def test_image_score_is_max_of_21x21_average(batch):
    m = tiny()
    pred = m.predict(batch['image']); scores, maps = pred.scores, pred.maps
    ref = F.avg_pool2d(maps[:, None], 21, stride=1, padding=10).flatten(1).amax(1)
    assert torch.allclose(scores, ref)
    hot = torch.zeros(1, 64, 64)
    hot[0, 32, 32] = 1
    assert torch.allclose(image_score(hot), torch.tensor([1 / 441]))
    block = torch.zeros(1, 64, 64)
    block[0, 10:31, 10:31] = 1
    assert torch.allclose(image_score(block), torch.tensor([1.0]))


def test_validation_loss_is_fixed(batch):
    m = tiny().train()
    v1, v2 = m.validation_loss(batch), m.validation_loss(batch)
    assert torch.equal(v1, v2) and not v1.requires_grad and v1.ndim == 0 and m.training
    # training draws new anomalies every step
    m.eval()
    assert m.training_step(batch).item() != m.training_step(batch).item()


def test_anomalies_reproducible_per_task(batch):
    a, b = tiny(), tiny()
    a.begin_task(2); b.begin_task(2)
    assert torch.equal(a.generator_(batch['image'], a.anomaly_rng)[0], b.generator_(batch['image'], b.anomaly_rng)[0])
    a.begin_task(1); b.begin_task(2)
    assert not torch.equal(a.generator_(batch['image'], a.anomaly_rng)[1], b.generator_(batch['image'], b.anomaly_rng)[1])


def test_state_dict_round_trip(batch):
    torch.manual_seed(1)
    a = tiny(seed=3)
    torch.manual_seed(2)
    b = tiny(seed=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())  # seed-only construction
    opt, _ = a.configure_optimizer()
    a.train()
    for _ in range(2):
        opt.zero_grad()
        a.training_step(batch).backward()
        opt.step()
    c = tiny(seed=4)
    c.load_state_dict(a.state_dict())
    assert torch.equal(a.predict(batch['image']).maps, c.predict(batch['image']).maps)


def test_config_fields_honoured():
    cfg = load_config('draem', overrides=dict(anomaly_source='procedural', num_epochs=20, lr=3e-4, base_width=8, disc_width=4,
                                              beta_min=0.2, beta_max=0.6, seed=5))
    assert cfg.normalize is False
    m = build_model(cfg)
    assert (m.base_width, m.disc_width, m.generator_.beta, m.milestones(), m.seed) == (8, 4, (0.2, 0.6), [16, 18], 5)
    assert m.configure_optimizer()[0].param_groups[0]['lr'] == 3e-4
    assert m.reconstructive_subnetwork.encoder.block1[0].out_channels == 8
    assert m.discriminative_subnetwork.encoder_segment.block1[0].out_channels == 4
    assert m.discriminative_subnetwork.encoder_segment.block1[0].in_channels == 6


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'carpet'], n_train=8, n_test_good=2, n_test_defect=2, size=32)
    return root


@pytest.mark.parametrize('strategy', ['naive', 'replay'])
def test_end_to_end(tiny_data, tmp_path, strategy):
    cfg = load_config('draem', overrides=dict(sample_strategy=strategy, data_path=str(tiny_data), output_dir=str(tmp_path),
                                              anomaly_source='procedural', img_size=32, num_tasks=2, num_epochs=1,
                                              batch_size=4, base_width=8, disc_width=8, mem_size=4, gallery_size=1,
                                              device='cpu'))
    res = Experiment(cfg, progress=False, log=lambda s: None).run()
    assert res['status'] == 'complete' and res['weights']['anomaly_source'] == 'procedural'
    run = Path(res['run_dir'])
    on_disk = json.loads((run / 'results.json').read_text())
    assert on_disk['weights']['anomaly_source'] == 'procedural'
    assert all(math.isfinite(x) for log in res['training'] for x in log['train_loss'])
    if strategy == 'replay':  # the memory holds references to the original files, nothing synthetic
        assert (run / 'replay' / 'step0.json').exists()
