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
