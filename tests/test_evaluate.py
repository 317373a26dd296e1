"CL summaries, cost accounting and the result files of clad.evaluate."
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clad.core import CladError
from clad.evaluate import (COST_KEYS, METRICS, RESULT_KEYS, SUMMARY_KEYS, CostMeter, RunRecorder, cl_summary,
                           environment_info, evaluate_task, find_joint_run, load_results, nbytes, param_bytes,
                           pooled_metrics, save_gallery, validate_results)

ROOT = Path(__file__).resolve().parents[1]


# ---- references written from the definitions ----
def ref_summary(R, b):
    R = np.array(R, float); T = R.shape[0]; L = T - 1
    return dict(final_avg=R[L].mean(),
                avg_seen=[R[t, :t + 1].mean() for t in range(T)],
                bwt=np.mean([R[L, j] - R[j, j] for j in range(L)]),
                forgetting=np.mean([max(R[l, j] for l in range(j, L)) - R[L, j] for j in range(L)]),
                fwt=np.mean([R[j - 1, j] - b for j in range(1, T)]),
                forgetting_legacy=np.mean([max(0, max(1 - R[L, j] / R[l, j] for l in range(L))) for j in range(L)]))


@pytest.mark.parametrize('seed', range(5))
def test_cl_summary_matches_reference(seed):
    rng = np.random.default_rng(seed); T = int(rng.integers(2, 8))
    R = rng.uniform(0.3, 1, (T, T)).tolist()
    s = cl_summary(R, joint=0.95, metric='pixel_auroc')
    ref = ref_summary(R, 0.5)
    for k, v in ref.items(): assert s[k] == pytest.approx(v, abs=1e-12), k
    assert s['gap_to_joint'] == pytest.approx((0.95 - ref['final_avg']) / 0.95)
    b = rng.uniform(0.4, 0.6, T).tolist()
    assert cl_summary(R, baseline=b)['fwt'] == pytest.approx(np.mean([R[j - 1][j] - b[j] for j in range(1, T)]))


def test_cl_summary_nulls_and_reasons():
    one = cl_summary([[0.8, 0.6]], seen_all=True, metric='image_auroc')
    assert one['avg_seen'] == [pytest.approx(0.7)] and all(one[k] is None for k in ('bwt', 'forgetting', 'fwt', 'forgetting_legacy'))
    assert one['reasons']['bwt'] == 'joint training has no task sequence'
    first = cl_summary([[0.8, 0.6]])  # a sequential run stopped after step 0
    assert first['avg_seen'] == [0.8] and first['reasons']['bwt'] == 'needs at least 2 training steps'
    s = cl_summary([[0.9, None], [None, 0.8]], metric='image_auroc')
    assert s['final_avg'] == 0.8 and 'notes' in s and s['bwt'] is None and s['reasons']['bwt']
    z = cl_summary([[0.0, 0.5], [0.2, 0.9]], metric='pixel_f1_max')
    assert z['forgetting_legacy'] is None and 'skipped' in z['notes']['forgetting_legacy']
    assert z['fwt'] is None and 'baseline' in z['reasons']['fwt']
    assert cl_summary([[0.5, 0.5], [0.5, 0.5]], joint=0.0)['gap_to_joint'] is None
    with pytest.raises(CladError, match='steps'): cl_summary([[1.0], [1.0]])


def test_legacy_forgetting_quirks():
    # l < j is included: task 1 scored higher before it was trained (0.9) than after (0.6) -> counted
    R = [[0.5, 0.9, 0.1], [0.5, 0.6, 0.1], [0.5, 0.6, 0.8]]
    s = cl_summary(R)
    assert s['forgetting_legacy'] == pytest.approx((0 + (1 - 0.6 / 0.9)) / 2)
    assert s['forgetting'] == pytest.approx(0.0)  # Chaudhry only looks at l >= j
    assert cl_summary([[0.5, 0.1], [0.9, 0.8]])['forgetting_legacy'] == 0.0  # clipped, never negative


# ---- cost ----
def test_cost_meter_and_helpers():
    m = CostMeter('cpu'); net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with m.train(0): sum(range(10000))
    with m.train(0): pass
    with m.train(1): pass
    with m.inference(10): pass
    m.record_model(net); m.record_memory(1, memory_bank=torch.zeros(5, 2), stats=np.zeros(3, np.float64), extra=128)
    c = m.summary()
    assert len(c['train_seconds']) == 2 and all(k in c for k in COST_KEYS)
    assert param_bytes(net) == (4 * 3 + 3 + 3 + 3) * 4  # BatchNorm running stats are buffers, not parameters
    assert c['additional_memory_mb'] == pytest.approx((40 + 24 + 128) / 2**20)
    assert nbytes({'a': [torch.zeros(2, dtype=torch.uint8)], 'b': (np.zeros(2, np.int16),)}) == 6
    assert c['peak_memory_mb'] > 1 and environment_info('cpu')['torch'] == torch.__version__


# ---- result files ----
def make_run(tmp_path, strategy='naive', seen_all=False, value=None):
    tasks = ['a', 'b', 'c']; rng = np.random.default_rng(0)
    rec = RunRecorder({'architecture': 'toy', 'seed': 0}, tasks, seen_all=seen_all,
                      data=dict(name='toy', path='/x', fingerprint='f', tasks=tasks), weights=dict(backbone='none'))
    labels = np.r_[0, 0, 1, 1]; masks = np.zeros((4, 8, 8)); masks[2:, 2:4, 2:4] = 1
    for t in range(rec.n_steps):
        for j in range(3):
            maps = rng.random((4, 8, 8)) + masks
            vals, why = evaluate_task(maps.reshape(4, -1).max(1), maps, labels, masks, image_threshold=1.0)
            if value is not None: vals = dict.fromkeys(METRICS, value)
            rec.add_row(t, tasks[j], vals, why)
        rec.add_pooled(t, *pooled_metrics([maps.reshape(4, -1).max(1)], [maps], [labels], [masks]))
    meter = CostMeter(); meter.record_model(torch.nn.Linear(2, 2)); rec.add_cost(meter)
    run_dir = tmp_path / 'toy' / strategy / 'seed0'
    rec.write(run_dir)
    return rec, run_dir


def test_write_and_load_results(tmp_path):
    rec, run_dir = make_run(tmp_path)
    d = load_results(run_dir)
    assert all(k in d for k in RESULT_KEYS)
    assert set(d['matrices']) == set(METRICS) and all(len(R) == 3 and all(len(r) == 3 for r in R) for R in d['matrices'].values())
    assert all(set(SUMMARY_KEYS) <= set(d['summary'][m]) for m in METRICS)
    assert d['summary']['image_auroc']['gap_to_joint'] is None
    assert sorted(p.name for p in run_dir.iterdir()) == ['figures', 'metrics.csv', 'results.json']  # no temporaries
    assert {p.name for p in (run_dir / 'figures').iterdir()} == {'matrices.png', 'avg_seen.png'}
    rows = list(csv.DictReader((run_dir / 'metrics.csv').open()))
    assert list(rows[0]) == ['step', 'task', 'metric', 'value'] and len(rows) == 3 * 3 * len(METRICS)
    r = next(r for r in rows if r['metric'] == 'pixel_aupro' and r['step'] == '2' and r['task'] == '1')
    assert float(r['value']) == pytest.approx(d['matrices']['pixel_aupro'][2][1])
    json.dumps(d, allow_nan=False)  # strict JSON


def test_joint_run_gives_gap(tmp_path):
    make_run(tmp_path, 'multi_task', seen_all=True, value=0.9)
    _, run_dir = make_run(tmp_path, 'naive', value=0.6)
    assert find_joint_run(run_dir) == tmp_path / 'toy' / 'multi_task' / 'seed0' / 'results.json'
    d = load_results(run_dir)
    assert d['summary']['pixel_aupro']['gap_to_joint'] == pytest.approx((0.9 - 0.6) / 0.9)
    j = load_results(tmp_path / 'toy' / 'multi_task' / 'seed0')
    assert len(j['matrices']['image_auroc']) == 1 and j['summary']['image_auroc']['bwt'] is None


def test_unevaluated_entries_are_null_with_reason(tmp_path):
    rec = RunRecorder({}, ['a', 'b'], data=dict(name='n', path='', fingerprint=''))
    rec.add_row(0, 0, dict.fromkeys(METRICS, 0.7))
    d = rec.results()
    assert d['matrices']['image_auroc'] == [[0.7, None], [None, None]]
    assert d['reasons']['matrices']['image_auroc'][1][1] == 'not evaluated'
    validate_results(d)
    with pytest.raises(CladError, match='task'): rec.add_row(0, 'zzz', {})
    with pytest.raises(CladError, match='step'): rec.add_row(5, 0, {})


def test_validate_results_names_problems(tmp_path):
    _, run_dir = make_run(tmp_path)
    d = json.loads((run_dir / 'results.json').read_text())
    bad = json.loads(json.dumps(d)); del bad['cost']; bad['matrices']['image_ap'][0] = [0.5, 3.0, None]
    del bad['summary']['pixel_ap']['bwt']
    with pytest.raises(CladError) as e: validate_results(bad)
    msg = str(e.value)
    assert "missing key 'cost'" in msg and 'matrices.image_ap[0]' in msg and "summary.pixel_ap: missing 'bwt'" in msg
    with pytest.raises(CladError, match='no results.json'): load_results(tmp_path / 'nowhere')


def test_schema_documented_in_notebook():
    nb = json.loads((ROOT / 'nbs' / '06_evaluate.ipynb').read_text())
    md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    for k in (*RESULT_KEYS, *SUMMARY_KEYS, *COST_KEYS, 'metrics.csv', 'step,task,metric,value'):
        assert f'`{k}`' in md or k in md, k


def test_gallery(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    maps = [rng.random((16, 16)) for _ in range(2)]
    p = save_gallery(tmp_path, 'metal nut/1', imgs, None, maps, 0.5)
    assert p == tmp_path / 'figures' / 'gallery_metal_nut_1.png' and p.stat().st_size > 1000


# ---- per-class results ----
def test_class_results_written_and_validated(tmp_path):
    rec = RunRecorder({'architecture': 'toy', 'seed': 0}, ['a+b', 'c'], data=dict(name='toy', path='', fingerprint='f'),
                      classes={'a': 0, 'b': 0, 'c': 1}, class_test_images={'a': 4, 'b': 6, 'c': 2})
    C = [[0.9, 0.7, 0.5], [0.6, 0.5, 0.8]]
    for t, row in enumerate(C):
        for j in range(2): rec.add_row(t, j, dict.fromkeys(METRICS, 0.5))
        for c, v in zip('abc', row): rec.add_class_row(t, c, dict.fromkeys(METRICS, v))
    run_dir = tmp_path / 'toy' / 'naive' / 'seed0'; rec.write(run_dir, figures=False)
    d = load_results(run_dir)
    assert d['class_matrices']['pixel_aupro'] == C and d['matrices']['pixel_aupro'] == [[0.5, 0.5], [0.5, 0.5]]
    s = d['class_summary']['image_auroc']  # a, b trained at step 0 (not at steps 0 and 1, as task columns would be)
    assert s['avg_seen'] == [pytest.approx(0.8), pytest.approx(1.9 / 3)] and s['forgetting'] == pytest.approx((0.3 + 0.2) / 2)
    assert s['bwt'] == pytest.approx(((0.6 - 0.9) + (0.5 - 0.7)) / 2)
    rows = list(csv.DictReader((run_dir / 'metrics_per_class.csv').open()))
    assert list(rows[0]) == ['step', 'class', 'metric', 'value'] and len(rows) == 2 * 3 * len(METRICS)
    assert [r['value'] for r in rows if r['metric'] == 'pixel_ap' and r['step'] == '1'] == ['0.6', '0.5', '0.8']
    bad = json.loads(json.dumps(d)); bad['class_tasks'] = [0, 0, 2]; bad['class_matrices']['image_ap'][0][1] = 1.5
    del bad['class_summary']['pixel_ap']['forgetting']
    with pytest.raises(CladError) as e: validate_results(bad)
    msg = str(e.value)
    assert 'class_tasks: expected 3 task indices below 2' in msg and 'class_matrices.image_ap[0]' in msg
    assert "class_summary.pixel_ap: missing 'forgetting'" in msg
    partial = json.loads(json.dumps(d)); del partial['classes']
    with pytest.raises(CladError, match="missing key 'classes'"): validate_results(partial)


def test_class_gap_to_joint_from_the_joint_run(tmp_path):
    kw = dict(data=dict(name='toy', path='', fingerprint='f'), classes={'a': 0, 'b': 0, 'c': 1})
    joint = RunRecorder({}, ['a+b', 'c'], seen_all=True, **kw)
    for c, v in zip('abc', (1.0, 0.5, 0.75)): joint.add_class_row(0, c, dict.fromkeys(METRICS, v))
    for j in range(2): joint.add_row(0, j, dict.fromkeys(METRICS, 0.5))
    joint.write(tmp_path / 'toy' / 'multi_task' / 'seed0', figures=False)
    seq = RunRecorder({}, ['a+b', 'c'], **kw)
    for t in range(2):
        for j in range(2): seq.add_row(t, j, dict.fromkeys(METRICS, 0.25))
        for c in 'abc': seq.add_class_row(t, c, dict.fromkeys(METRICS, 0.375))
    seq.write(tmp_path / 'toy' / 'naive' / 'seed0', figures=False)
    d = load_results(tmp_path / 'toy' / 'naive' / 'seed0')
    assert d['class_summary']['image_auroc']['gap_to_joint'] == (0.75 - 0.375) / 0.75  # the joint run's mean over classes
    assert d['summary']['image_auroc']['gap_to_joint'] == (0.5 - 0.25) / 0.5  # over tasks, unchanged


@pytest.fixture(scope='module')
def merged_run(tmp_path_factory):
    "A tiny MVTec tree of 3 classes, bottle and cable merged into one task, then carpet: STFPM, 1 epoch per task."
    from clad.config import load_config
    from clad.data import write_tiny_mvtec
    from clad.experiment import Experiment
    tmp = tmp_path_factory.mktemp('merged')
    write_tiny_mvtec(tmp / 'data', categories=['bottle', 'cable', 'carpet'], n_train=6, n_test_good=3, n_test_defect=3, size=32)
    cfg = load_config('stfpm', overrides=dict(data_path=str(tmp / 'data'), output_dir=str(tmp / 'out'), img_size=32,
                      backbone='resnet18', pretrained=False, num_epochs=1, batch_size=4, sample_strategy='naive', device='cpu',
                      task_order=[['bottle', 'cable'], 'carpet'], num_tasks=2, gallery_size=1))
    exp = Experiment(cfg, progress=False, log=lambda s: None)
    return exp, exp.run()


def test_merged_task_per_class_and_per_task(merged_run):
    from clad.experiment import score_records
    from clad.metrics import evaluate_task
    exp, rec = merged_run
    assert rec['tasks'] == ['bottle+cable', 'carpet'] and rec['classes'] == ['bottle', 'cable', 'carpet']
    assert (rec['class_tasks'], rec['class_test_images']) == ([0, 0, 1], [6, 6, 6])
    # the one-class task: its class column is its task column, exactly
    for m in METRICS: assert [r[2] for r in rec['class_matrices'][m]] == [r[1] for r in rec['matrices'][m]], m
    # the merged task, rescored by hand with the last model and the task's thresholds: the task value is the metric over
    # the union of its classes' test images, each class value the metric over that class's images alone
    task, model = exp.tasks[0], exp.models[-1]
    thr = rec['thresholds']['1/0']
    def metric(records):
        s = score_records(model, records, exp.cfg, exp.device)
        return evaluate_task(s.scores, s.maps, s.labels, s.masks, thr['image'], thr['pixel'])[0]
    union = metric(task.test)
    for m in ('image_auroc', 'pixel_auroc', 'pixel_ap', 'pixel_aupro', 'image_f1'):
        assert rec['matrices'][m][1][0] == pytest.approx(union[m], abs=1e-6), m
    for i, c in enumerate(('bottle', 'cable')):
        alone = metric([r for r in task.test if r.category == c])
        for m in ('image_auroc', 'pixel_auroc', 'pixel_ap', 'pixel_aupro', 'image_f1'):
            assert rec['class_matrices'][m][1][i] == pytest.approx(alone[m], abs=1e-6), (c, m)
    per_class = [rec['class_matrices']['pixel_ap'][1][i] for i in (0, 1)]
    assert per_class[0] != per_class[1] and rec['matrices']['pixel_ap'][1][0] not in per_class, per_class
    # after step 0, carpet is not yet trained: seen classes are bottle and cable
    s = rec['class_summary']['pixel_ap']
    assert s['avg_seen'][0] == pytest.approx(np.mean(rec['class_matrices']['pixel_ap'][0][:2]))
    assert s['forgetting'] == pytest.approx(np.mean([rec['class_matrices']['pixel_ap'][0][i] - per_class[i] for i in (0, 1)]))
