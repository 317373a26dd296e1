"Tests of clad.models.efficientad: networks, losses, teacher distillation, calibration, end-to-end runs."
import json
from pathlib import Path

import pytest
import torch

from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.models.base import build_model
from clad.models.efficientad import (PDN, AutoEncoder, EfficientADModel, distill_main, distill_teacher, hard_feature_loss,
                                     load_teacher, penalty_setup)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "Tiny MVTec data at 64 px and a 16-channel teacher distilled on it for a few steps."
    tmp = tmp_path_factory.mktemp('effad')
    root = write_tiny_mvtec(tmp/'data', categories=('bottle', 'carpet'), n_train=8, n_test_good=2, n_test_defect=2, size=64)
    meta = distill_teacher(root, tmp/'teacher.pth', steps=12, backbone='resnet18', out_channels=16, image_size=32,
                           batch_size=4, lr=1e-3, pretrained=False, device='cpu', log=None)
    return tmp, root, meta


def _model(tmp, **kw):
    return EfficientADModel(out_channels=16, teacher_weights=tmp/'teacher.pth', imagenet_train_path=tmp/'no-imagenet', **kw)


def _loader(*xs):
    return [{'image': x, 'label': torch.zeros(len(x), dtype=torch.long)} for x in xs]


def test_shapes():
    x = torch.randn(2, 3, 64, 64)
    for size in ('small', 'medium'):
        t, s = PDN(8, size), PDN(16, size)
        assert t(x).shape == (2, 8, 8, 8) and s(x).shape == (2, 16, 8, 8)
    assert AutoEncoder(8).eval()(x).shape == (2, 8, 8, 8)
    m = EfficientADModel(out_channels=8, pretrained=False)
    pred = m.predict(x); scores, maps = pred.scores, pred.maps
    assert scores.shape == (2,) and maps.shape == (2, 64, 64)


def test_hard_feature_loss_keeps_top_share():
    d = torch.zeros(10000); d[:10] = torch.arange(10, 0, -1).float()  # 10 largest: 10..1
    assert float(hard_feature_loss(d, 0.999)) == pytest.approx(sum(range(1, 11)) / 10)  # top 0.1 % = 10 elements
    assert float(hard_feature_loss(d, 0.9995)) == pytest.approx((10 + 9 + 8 + 7 + 6) / 5)
    r = torch.rand(4, 16, 9, 9)
    assert float(hard_feature_loss(r, 0.999)) == pytest.approx(float(r[r >= torch.quantile(r.flatten(), 0.999)].mean()))


def test_distillation_reduces_loss_and_loads(tiny):
    tmp, root, meta = tiny
    assert meta['loss_last'] < meta['loss_first']
    sd, m = load_teacher(tmp/'teacher.pth', 'small', 16)
    assert m['steps'] == 12 and m['backbone'] == 'resnet18' and m['n_images'] == 2 * 12
    PDN(16).load_state_dict(sd)
    assert distill_main(['--images', str(root), '--out', str(tmp/'cli.pth'), '--steps', '1', '--backbone', 'resnet18',
                         '--out-channels', '8', '--image-size', '32', '--batch-size', '2', '--random-backbone', '--device', 'cpu']) == 0
    assert load_teacher(tmp/'cli.pth', 'small', 8)[1]['steps'] == 1


def test_missing_teacher_names_command(tmp_path):
    with pytest.raises(CladError, match='clad-distill-teacher --images'):
        EfficientADModel(out_channels=8, teacher_weights=tmp_path/'none.pth')
    with pytest.raises(CladError, match='clad-distill-teacher') as e:
        EfficientADModel(out_channels=8, teacher_weights='', pretrained=True)
    assert 'tests only' in str(e.value)
    assert EfficientADModel(out_channels=8, pretrained=False).weights_info()['source'] == 'random-init'


def test_penalty_off_when_folder_missing(tmp_path):
    m = EfficientADModel(out_channels=8, pretrained=False, imagenet_train_path=tmp_path/'tiny-imagenet-200')
    assert m.penalty_images is None
    assert m.penalty == m.weights_info()['penalty'] == f"off: {tmp_path/'tiny-imagenet-200'} not found"
    (tmp_path/'empty').mkdir()
    with pytest.raises(CladError, match='imagenet_train_path'): penalty_setup(tmp_path/'empty')


def test_teacher_stats_frozen_after_first_task(tiny):
    m = _model(tiny[0])
    g = torch.Generator().manual_seed(0)
    m.begin_task(0, _loader(torch.randn(3, 3, 64, 64, generator=g)))
    mean, std = m.teacher_mean.clone(), m.teacher_std.clone()
    m.begin_task(1, _loader(torch.randn(3, 3, 64, 64, generator=g) * 2 + 1))
    assert torch.equal(m.teacher_mean, mean) and torch.equal(m.teacher_std, std) and int(m.teacher_stats_task) == 0
    assert m.weights_info()['teacher_stats'] == 'task 0 training images, frozen'


def test_quantiles_come_from_calibration_loader(tiny):
    m = _model(tiny[0])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g)
    m.begin_task(0, _loader(x))
    raw = m.predict(x).maps
    m.calibrate(_loader(torch.randn(2, 3, 64, 64, generator=g)))
    q1, maps1 = m.map_quantiles.clone(), m.predict(x).maps
    assert not torch.equal(raw, maps1)
    m.calibrate(_loader(torch.randn(2, 3, 64, 64, generator=g) * 3))
    assert not torch.equal(m.map_quantiles, q1) and not torch.equal(m.predict(x).maps, maps1)
    # defective validation images (label 1) are not used
    m.calibrate([{'image': torch.randn(2, 3, 64, 64, generator=g) * 3, 'label': torch.tensor([0, 1])}])
    assert bool(m.calibrated)


def test_state_dict_round_trip(tiny):
    m = _model(tiny[0])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    m.begin_task(0, _loader(x)); m.calibrate(_loader(x))
    m2 = _model(tiny[0], seed=7)
    m2.load_state_dict(m.state_dict())
    assert m2.teacher_stats_set and bool(m2.calibrated)
    assert torch.equal(m.predict(x).maps, m2.predict(x).maps)


def test_training_step_any_batch_size(tiny):
    m = _model(tiny[0])
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    m.begin_task(0, _loader(x))
    opt, _ = m.configure_optimizer()
    for b in (1, 3):
        loss = m.training_step({'image': x[:b]}); loss.backward(); opt.step(); opt.zero_grad()
        assert torch.isfinite(loss)


def _cfg(tmp, root, strategy, out):
    from clad.config import load_config
    return load_config('efficientad', overrides=dict(
        sample_strategy=strategy, data_path=str(root), num_tasks=2, img_size=64, num_epochs=1, batch_size=4,
        eval_batch_size=8, mem_size=4, device='cpu', output_dir=str(out), imagenet_train_path=str(tmp/'no-imagenet'),
        wandb_mode='disabled', gallery_size=1, out_channels=16, teacher_weights=str(tmp/'teacher.pth')))


@pytest.mark.parametrize('strategy', ['naive', 'replay'])
def test_end_to_end(tiny, tmp_path, strategy):
    from clad.experiment import Experiment
    tmp, root, _ = tiny
    cfg = _cfg(tmp, root, strategy, tmp_path/'out')
    rec = Experiment(cfg, progress=False, log=lambda *a: None).run()
    assert rec['status'] == 'complete'
    res = json.loads((Path(rec['run_dir'])/'results.json').read_text())
    text = json.dumps(res)
    assert 'not found' in text and 'penalty' in text  # the penalty's status is in the result file
    assert 'validation normals' in text  # the map quantiles were calibrated on validation normals


# --- the teacher made on first use (no teacher_weights): cache, lock, provenance, independent images
import threading
import clad.models.efficientad as effad
from clad.config import load_config
from clad.models.efficientad import (DISTILL_PHOTOS, PhotoCrops, distill_photo_names, ensure_teacher, teacher_cache_key,
                                     teacher_spec)

TINY_SPEC = dict(out_channels=8, image_size=32, steps=3, batch_size=2, backbone='resnet18', pretrained=False, photos=['camera'])


@pytest.mark.parametrize('field,value', [('model_size', 'medium'), ('out_channels', 64), ('image_size', 32), ('steps', 251),
                                         ('batch_size', 4), ('seed', 1), ('backbone', 'resnet18'), ('photos', ['camera']),
                                         ('pretrained', False)])
def test_cache_key_changes_with_each_defining_field(field, value):
    assert teacher_cache_key(teacher_spec(**{field: value})) != teacher_cache_key(teacher_spec())
    assert teacher_cache_key(teacher_spec()) == teacher_cache_key(teacher_spec())


def test_cache_key_changes_with_code_version(monkeypatch):
    before = teacher_cache_key(teacher_spec())
    monkeypatch.setattr(effad, 'TEACHER_CACHE_VERSION', effad.TEACHER_CACHE_VERSION + 1)
    assert teacher_cache_key(teacher_spec()) != before


def test_distillation_images_exclude_the_stream():
    from clad.synthetic import TEXTURES
    stream_photos = {t['photo'] for t in TEXTURES.values()}
    assert stream_photos == {'brick', 'grass', 'gravel'}
    assert not stream_photos & set(distill_photo_names()) and len(distill_photo_names()) == len(DISTILL_PHOTOS) == 14
    assert distill_photo_names(DISTILL_PHOTOS + ('brick',)) == distill_photo_names()  # added back, still excluded
    assert teacher_spec()['source'] == dict(kind='skimage-photo-crops', skimage=teacher_spec()['source']['skimage'],
                                            photos=list(distill_photo_names()))


def test_ensure_teacher_reuses_cache(tmp_path, monkeypatch):
    p1, made1 = ensure_teacher(tmp_path, 'cpu', log=None, **TINY_SPEC)
    assert made1 and p1.is_file() and p1.parent == tmp_path and teacher_cache_key(teacher_spec(**TINY_SPEC)) in p1.name
    monkeypatch.setattr(effad, 'distill_teacher', lambda *a, **k: pytest.fail('distilled a second time'))
    p2, made2 = ensure_teacher(tmp_path, 'cpu', log=None, **TINY_SPEC)
    assert (p2, made2) == (p1, False)
    assert [f.name for f in tmp_path.iterdir() if f.suffix == '.pth'] == [p1.name]


def test_ensure_teacher_locks_against_a_second_process(tmp_path, monkeypatch):
    calls = []
    def slow_distill(ds, out, *a, **k):
        calls.append(out); import time; time.sleep(0.5)
        Path(out).write_bytes(b'teacher')
    monkeypatch.setattr(effad, 'distill_teacher', slow_distill)
    monkeypatch.setattr(effad, 'PhotoCrops', lambda *a, **k: None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_teacher(tmp_path, 'cpu', log=None, **TINY_SPEC))) for _ in range(2)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert len(calls) == 1 and sorted(made for _, made in results) == [False, True]


def test_model_distils_its_teacher_on_first_use_and_records_provenance(tmp_path, capsys):
    import hashlib
    cfg = load_config('efficientad', overrides=dict(teacher_cache_dir=str(tmp_path), teacher_steps=2, teacher_image_size=32,
                                                    out_channels=16, device='cpu', imagenet_train_path=str(tmp_path / 'none')))
    assert cfg.model_params.teacher_weights == ''
    m = build_model(cfg)
    out = capsys.readouterr().out
    assert 'distilled once from tf_efficientnet_lite0' in out and 'EfficientAD teacher: file:' in out and 'distilled now' in out
    t = m.weights_info()['teacher']
    path = Path(t['path'])
    assert path.parent == tmp_path and m.weights_info()['source'] == f'file:{path}'
    assert (t['steps'], t['n_images'], t['backbone'], t['image_size']) == (2, 14, 'tf_efficientnet_lite0', 32)
    assert t['images'].startswith('scikit-image') and 'camera' in t['images'] and 'brick' not in t['images']
    assert t['file_sha256'] == hashlib.sha256(path.read_bytes()).hexdigest() and t['loss_last'] > 0
    assert t['cache_key'] in path.name
    build_model(cfg)
    assert 'reused from the cache' in capsys.readouterr().out
