"""The literature's protocols: each file is the paper's stream, checks against the class lists, streams on tiny data,
and a VisA protocol runs end to end through clad-run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clad.config import load_config, project_root
from clad.models.base import available_models
from clad.core import CladError
from clad.data import MVTEC_CLASSES, VISA_CLASSES, make_task_stream, write_tiny_mvtec, write_tiny_visa
from clad.protocols import PROTOCOLS, PROTOCOLS_DIR, check_protocol, load_protocol, protocol_figures, protocol_tasks

# Written out here, independently of the configuration files, from the papers' code (see nbs/07_protocols.ipynb).
BASE10 = ['bottle', 'screw', 'cable', 'capsule', 'carpet', 'grid', 'hazelnut', 'leather', 'metal_nut', 'pill']
VISA8 = ['candle', 'capsules', 'cashew', 'chewinggum', 'fryum', 'macaroni1', 'macaroni2', 'pcb1']
EXPECTED = {
    'mvtec_clad10': [['hazelnut'], ['bottle'], ['cable'], ['capsule'], ['metal_nut'], ['pill'], ['toothbrush'], ['transistor'],
                     ['zipper'], ['screw']],
    'mvtec_ucad15': [[c] for c in ['bottle', 'cable', 'capsule', 'carpet', 'grid', 'hazelnut', 'leather', 'metal_nut', 'pill',
                                   'screw', 'tile', 'toothbrush', 'transistor', 'wood', 'zipper']],
    'mvtec_14-1': [['bottle', 'screw', 'tile', 'toothbrush', 'transistor', 'wood', 'cable', 'capsule', 'carpet', 'grid',
                    'hazelnut', 'leather', 'metal_nut', 'pill'], ['zipper']],
    'mvtec_10-5': [BASE10, ['tile', 'toothbrush', 'transistor', 'wood', 'zipper']],
    'mvtec_3x5': [['bottle', 'cable', 'capsule'], ['carpet', 'grid', 'hazelnut'], ['leather', 'metal_nut', 'pill'],
                  ['screw', 'tile', 'toothbrush'], ['transistor', 'wood', 'zipper']],
    'mvtec_10-1x5': [BASE10, ['tile'], ['toothbrush'], ['transistor'], ['wood'], ['zipper']],
    'mvtec_dne5x3': [['leather', 'bottle', 'metal_nut'], ['grid', 'screw', 'zipper'], ['tile', 'hazelnut', 'toothbrush'],
                     ['wood', 'transistor', 'pill'], ['carpet', 'capsule', 'cable']],
    'visa_ucad12': [[c] for c in ['candle', 'capsules', 'cashew', 'chewinggum', 'fryum', 'macaroni1', 'macaroni2', 'pcb1',
                                  'pcb2', 'pcb3', 'pcb4', 'pipe_fryum']],
    'visa_11-1': [VISA8 + ['pcb2', 'pcb3', 'pcb4'], ['pipe_fryum']],
    'visa_8-4': [VISA8, ['pcb2', 'pcb3', 'pcb4', 'pipe_fryum']],
    'visa_8-1x4': [VISA8, ['pcb2'], ['pcb3'], ['pcb4'], ['pipe_fryum']],
}
SHAPES = {'mvtec_clad10': [1] * 10, 'mvtec_ucad15': [1] * 15, 'mvtec_14-1': [14, 1], 'mvtec_10-5': [10, 5],
          'mvtec_3x5': [3] * 5, 'mvtec_10-1x5': [10] + [1] * 5, 'mvtec_dne5x3': [3] * 5, 'visa_ucad12': [1] * 12,
          'visa_11-1': [11, 1], 'visa_8-4': [8, 4], 'visa_8-1x4': [8, 1, 1, 1, 1]}


def test_every_file_is_a_documented_protocol():
    files = {p.stem for p in (project_root()/PROTOCOLS_DIR).glob('*.json')}
    assert files == set(EXPECTED) == set(PROTOCOLS)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_protocol_is_the_papers_stream(name):
    path = project_root()/PROTOCOLS_DIR/f'{name}.json'
    cfg = load_config('stfpm', path)  # usable as --parameters_path / the notebook's config
    dataset = name.split('_')[0]
    assert protocol_tasks(cfg) == EXPECTED[name] and cfg.num_tasks == len(EXPECTED[name])
    assert (cfg.dataset_name, cfg.data_path) == (dataset, f'data/{dataset}')
    assert cfg.sources['task_order'] == str(path)
    shape = check_protocol(path)
    assert shape['dataset'] == dataset and shape['classes_per_task'] == SHAPES[name] and shape['n_tasks'] == len(SHAPES[name])
    classes = MVTEC_CLASSES if dataset == 'mvtec' else VISA_CLASSES
    assert shape['n_classes'] == sum(SHAPES[name]) and shape['all_classes'] == (name != 'mvtec_clad10')
    assert {c for t in EXPECTED[name] for c in t} <= set(classes)
    # the file holds the stream only: model and training settings come from the other layers
    assert set(json.loads(path.read_text())) == {'protocol', 'data_path', 'dataset_name', 'task_order', 'num_tasks'}
    assert cfg.protocol == name and shape['protocol'] == name  # the file names its protocol, which the run records


def test_protocol_paths_resolve_as_the_cli_and_notebook_give_them(monkeypatch):
    monkeypatch.chdir(project_root()/'nbs')  # the result notebook runs in nbs/
    for given in ('configurations/protocols/visa_8-4.json', 'protocols/visa_8-4.json',
                  str(project_root()/'configurations/protocols/visa_8-4.json')):
        assert protocol_tasks(load_config('padim', given)) == EXPECTED['visa_8-4']


@pytest.mark.parametrize('model', [n for n, c in available_models().items() if c.__module__.startswith('clad.models.')])
def test_protocols_combine_with_every_model(model):
    cfg = load_protocol('mvtec_10-5', model)
    assert cfg.architecture == model and protocol_tasks(cfg) == EXPECTED['mvtec_10-5']


@pytest.mark.parametrize('fields,match', [
    (dict(task_order=[['bottle', 'candle'], 'zipper'], num_tasks=2), r"bad\.json: task_order\[0\]: 'candle' is not a mvtec class"),
    (dict(task_order=['bottle', ['cable', 'bottle']], num_tasks=2), r"'bottle' is in task 0 and in task 1"),
    (dict(task_order=[3, 'zipper'], num_tasks=2), r'task_order\[0\]: 3 is not a class name'),
    (dict(task_order=[[], 'zipper'], num_tasks=2), r'task_order\[0\] is an empty list'),
    (dict(task_order=[], num_tasks=0), r'task_order is empty'),
    (dict(task_order=['bottle', 'zipper'], num_tasks=1), r'bad\.json: num_tasks = 1, but task_order has 2 tasks'),
    (dict(task_order=['bottle'], num_tasks=1, dataset_name='mvtec_loco'), r"bad\.json: dataset_name 'mvtec_loco'"),
    (dict(task_order=['bottle'], num_tasks=1, protocol='mvtec_5-5'), r"bad\.json: protocol 'mvtec_5-5' is not one of mvtec_clad10"),
])
def test_check_protocol_rejects(tmp_path, fields, match):
    p = tmp_path/'bad.json'
    p.write_text(json.dumps(dict(dict(data_path='data/mvtec', dataset_name='mvtec'), **fields)))
    with pytest.raises(CladError, match=match): check_protocol(p)


def test_check_protocol_uses_the_named_dataset():
    assert check_protocol(load_protocol('visa_8-4'))['dataset'] == 'visa'
    with pytest.raises(CladError, match="'candle' is not a mvtec class"): check_protocol(load_protocol('visa_8-4'), dataset='mvtec')
    with pytest.raises(CladError, match="protocol 'visa_12'"): load_protocol('visa_12')


@pytest.fixture(scope='module')
def tiny_roots(tmp_path_factory):
    d = tmp_path_factory.mktemp('protocol_data')
    return dict(mvtec=write_tiny_mvtec(d/'mvtec', MVTEC_CLASSES, n_train=3, n_test_good=1, n_test_defect=1, size=8),
                visa=write_tiny_visa(d/'visa', VISA_CLASSES, n_train=3, n_test_good=1, n_test_defect=1, size=8))


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_protocol_streams_on_its_dataset(tiny_roots, name):
    cfg = load_protocol(name)
    stream = make_task_stream(tiny_roots[cfg.dataset_name], cfg.task_order, cfg.num_tasks)
    assert [t.categories for t in stream] == EXPECTED[name]
    for t, classes in zip(stream, EXPECTED[name]):
        assert t.name == '+'.join(classes) and {r.category for r in t.train + t.val + t.test} == set(classes)
        assert len(t.train) + len(t.val) == 3 * len(classes) and len(t.test) == 2 * len(classes) and t.has_masks


TINY = dict(img_size=32, backbone='resnet18', pretrained=False, num_epochs=1, batch_size=4, eval_batch_size=8,
            gallery_size=1, device='cpu', d_reduced=20)


@pytest.fixture(scope='module')
def visa_e2e(tmp_path_factory):
    return write_tiny_visa(tmp_path_factory.mktemp('visa_e2e')/'visa', VISA_CLASSES, n_train=4, n_test_good=2,
                           n_test_defect=2, size=32, mask_value=1)


@pytest.mark.parametrize('model', ['padim', 'stfpm'])
def test_visa_protocol_runs_end_to_end(visa_e2e, tmp_path, model):
    sets = dict(TINY, data_path=str(visa_e2e), output_dir=str(tmp_path))
    if model != 'padim': sets.pop('d_reduced')
    args = [sys.executable, '-m', 'clad.run', '--model', model, '--parameters_path', 'configurations/protocols/visa_8-4.json',
            '--seed', '0', '--no-progress']
    for k, v in sets.items(): args += ['--set', f'{k}={v if isinstance(v, str) else json.dumps(v)}']
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=project_root())
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(next(tmp_path.rglob('results.json')).read_text())
    assert r['status'] == 'complete'
    assert (r['data']['kind'], r['data']['layout'], r['data']['categories']) == ('visa', 'visa', VISA_CLASSES)
    assert [t['categories'] for t in r['data']['tasks']] == EXPECTED['visa_8-4']
    assert [(t['train'] + t['val'], t['test'], t['test_defect'], t['has_masks']) for t in r['data']['tasks']] == \
        [(32, 32, 16, True), (16, 16, 8, True)]
    for m in ('pixel_auroc', 'pixel_aupro', 'pixel_f1_max', 'image_auroc'):
        R = r['matrices'][m]
        assert len(R) == 2 and all(isinstance(v, float) and 0 <= v <= 1 for row in R for v in row), (m, R)
    assert all(isinstance(v, float) for v in r['pooled']['pixel_auroc'])
    # per class: the 12 VisA classes, with pixel metrics on each class's own test images (2 per class)
    assert r['classes'] == VISA_CLASSES and r['class_tasks'] == [0] * 8 + [1] * 4 and r['class_test_images'] == [4] * 12
    for m in ('pixel_auroc', 'pixel_ap', 'pixel_aupro', 'image_auroc'):
        C = r['class_matrices'][m]
        assert len(C) == 2 and all(isinstance(v, float) and 0 <= v <= 1 for row in C for v in row), (m, C)
    assert (tmp_path/model/r['config']['sample_strategy']/'seed0'/'metrics_per_class.csv').is_file()
    fig = protocol_figures(r)
    assert (r['config']['protocol'], fig['family']) == ('visa_8-4', 'iuf')
    assert [x['value'] for x in fig['rows']] == [r['class_summary']['image_auroc']['avg_seen'][-1],
                                                 r['class_summary']['pixel_auroc']['avg_seen'][-1]]
    assert fig['rows'][0]['value'] == pytest.approx(sum(r['class_matrices']['image_auroc'][-1]) / 12)
