"""The results table: mean ± std over seeds, one row per seed, exports, the command line."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clad.aggregate import aggregate, aggregate_main, fabricate_results, final_table, load_runs, summary_table, tidy_table
from clad.metrics import METRICS


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp('runs')
    fabricate_results(d, models=['stfpm', 'patchcore'], strategies=['multi_task', 'naive', 'replay'], seeds=[0, 1, 2], tasks=['a', 'b', 'c'])
    return d


def test_rows_per_seed(results):
    runs = load_runs(results, log=None)
    assert len(runs) == 2 * 3 * 3
    df = tidy_table(runs)
    naive = df[(df.model == 'stfpm') & (df.strategy == 'naive')]
    assert sorted(naive.seed.unique()) == [0, 1, 2]
    assert len(naive) == 3 * 3 * 3 * len(METRICS)  # seeds x steps x tasks x metrics
    joint = df[(df.model == 'stfpm') & (df.strategy == 'multi_task')]
    assert len(joint) == 3 * 1 * 3 * len(METRICS)  # joint training: one step


def test_mean_std_over_seeds(results):
    runs = load_runs(results, log=None)
    pick = [r for r in runs if (r['model'], r['strategy']) == ('patchcore', 'replay')]
    s = summary_table(runs).set_index(['model', 'strategy', 'quantity'])
    for q, get, scale in [('Pixel AU-PRO', lambda r: r['summary']['pixel_aupro']['final_avg'], 1),
                          ('Forgetting [%]', lambda r: r['summary']['pixel_f1_max']['forgetting'], 100),
                          ('Relative gap to joint δ [%]', lambda r: r['summary']['pixel_f1_max']['gap_to_joint'], 100),
                          ('Additional memory [MB]', lambda r: r['cost']['additional_memory_mb'], 1)]:
        v = np.array([get(r) for r in pick]) * scale
        row = s.loc[('patchcore', 'replay', q)]
        assert row['n'] == 3
        assert row['mean'] == pytest.approx(v.mean())
        assert row['std'] == pytest.approx(v.std(ddof=1))
    t = final_table(runs)
    v = [r['summary']['image_f1']['final_avg'] for r in pick]
    assert t.loc['Image F1', 'patchcore · replay'] == f'{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}'
    assert t.loc['Forgetting [%]', 'patchcore · multi_task'] == '–'


def test_single_seed_shows_mean_only(tmp_path):
    fabricate_results(tmp_path, models=['stfpm'], strategies=['naive'], seeds=[4])
    t = final_table(load_runs(tmp_path, log=None))
    assert '±' not in t.loc['Image AUROC', 'stfpm · naive']


def test_variants_are_kept_apart(tmp_path):
    fabricate_results(tmp_path / 'm100', models=['stfpm'], strategies=['replay'], seeds=[0, 1])
    fabricate_results(tmp_path / 'm300', models=['stfpm'], strategies=['replay'], seeds=[0, 1])
    for p in (tmp_path / 'm300').rglob('results.json'):
        r = json.loads(p.read_text()); r['config']['mem_size'] = 300; p.write_text(json.dumps(r))
    t = final_table(load_runs(tmp_path, log=None))
    assert list(t.columns) == ['stfpm · replay (mem_size=100)', 'stfpm · replay (mem_size=300)']


def test_incomplete_and_invalid_runs_are_skipped(tmp_path):
    fabricate_results(tmp_path, models=['stfpm'], strategies=['naive'], seeds=[0, 1])
    p = tmp_path / 'stfpm' / 'naive' / 'seed1' / 'results.json'
    r = json.loads(p.read_text()); r['status'] = 'running'; p.write_text(json.dumps(r))
    (tmp_path / 'junk').mkdir(); (tmp_path / 'junk' / 'results.json').write_text('not json')
    msgs = []
    assert [r['seed'] for r in load_runs(tmp_path, log=msgs.append)] == [0]
    assert len(msgs) == 2


def test_exports_written(results, tmp_path):
    res = aggregate(results, tmp_path / 'agg', log=lambda *a: None)
    names = sorted(p.name for p in res['files'])
    assert names == ['avg_seen_pixel_f1_max.png', 'final_table.csv', 'final_table.html', 'final_table.md',
                     'pooled_image_auroc.png', 'pooled_pixel_auroc.png', 'summary.csv', 'tidy.csv']
    assert all(p.stat().st_size > 0 for p in res['files'])
    assert '<table' in (tmp_path / 'agg' / 'final_table.html').read_text()
    md = (tmp_path / 'agg' / 'final_table.md').read_text().splitlines()
    assert len(md) == 2 + len(res['table'])
    import pandas as pd
    tidy = pd.read_csv(tmp_path / 'agg' / 'tidy.csv')
    assert list(tidy.columns) == ['model', 'strategy', 'variant', 'seed', 'step', 'task', 'task_index', 'metric', 'value']


def test_command_line(results, tmp_path):
    out = subprocess.run([sys.executable, '-m', 'clad.aggregate', str(results), '--out', str(tmp_path / 'x')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '| Image AUROC |' in out.stdout and (tmp_path / 'x' / 'final_table.csv').exists()
    assert aggregate_main([str(tmp_path / 'empty_nope')]) == 2


def test_gap_to_joint_filled_when_the_joint_run_came_later(tmp_path):
    from clad.aggregate import fabricate_results, load_runs
    dirs = fabricate_results(tmp_path, models=('stfpm',), strategies=('naive', 'multi_task'), seeds=(0,))
    naive = next(d for d in dirs if d.parent.name == 'naive') / 'results.json'
    r = json.loads(naive.read_text())
    for s in r['summary'].values(): s['gap_to_joint'] = None  # as if written before the joint run existed
    naive.write_text(json.dumps(r))
    runs = {x['strategy']: x for x in load_runs(tmp_path, log=None)}
    J = runs['multi_task']['summary']['image_auroc']['final_avg']; f = runs['naive']['summary']['image_auroc']['final_avg']
    assert abs(runs['naive']['summary']['image_auroc']['gap_to_joint'] - (J - f) / J) < 1e-12


def test_protocol_table_over_seeds(tmp_path):
    "UCAD's MVTec stream: the aggregate's protocol table is the mean ± std over seeds of each run's figures, beside the published ones."
    from clad.aggregate import class_final_table, protocol_tables
    from clad.protocols import protocol_figures
    fabricate_results(tmp_path / 'ucad', models=['stfpm'], strategies=['multi_task', 'replay'], seeds=[0, 1, 2], protocol='mvtec_ucad15')
    fabricate_results(tmp_path / 'plain', models=['stfpm'], strategies=['replay'], seeds=[0])  # no protocol: not in the table
    runs = load_runs(tmp_path, log=None)
    assert sorted({r['variant'] for r in runs}) == ['', 'no protocol', 'protocol=mvtec_ucad15']  # multi_task: one setting only
    tables = protocol_tables(runs)
    assert list(tables) == ['mvtec_ucad15']
    t, notes = tables['mvtec_ucad15']
    assert list(t.columns) == ['stfpm · multi_task', 'stfpm · replay', 'UCAD (published)', 'ReplayCAD (published)']
    replay = [r for r in runs if r['strategy'] == 'replay' and r['config'].get('protocol')]
    for q in ('final mean image AUROC', 'final mean pixel AP ("pixel AUPR")', 'forgetting, image AUROC',
              'FM (ReplayCAD): gap to joint, image AUROC'):
        v = [next(x['value'] for x in protocol_figures(r)['rows'] if x['quantity'] == q) for r in replay]
        assert t.loc[q, 'stfpm · replay'] == f'{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}', q
    fm = [r['class_summary']['image_auroc']['gap_to_joint'] for r in replay]
    joint = {r['seed']: r for r in runs if r['strategy'] == 'multi_task'}
    for r, g in zip(replay, fm):  # FM: the gap to the joint run of the same seed, over classes
        J = joint[r['seed']]['class_summary']['image_auroc']['final_avg']
        assert g == pytest.approx((J - r['class_summary']['image_auroc']['final_avg']) / J)
    assert t.loc['FM (ReplayCAD): gap to joint, image AUROC', 'stfpm · multi_task'] == '–'  # the joint run has no gap
    assert t.loc['final mean image AUROC', 'UCAD (published)'] == '0.930' and t.loc['final mean pixel AP ("pixel AUPR")', 'ReplayCAD (published)'] == '0.537'
    assert t.loc['forgetting, image AUROC', 'UCAD (published)'] == '–' and t.loc['Seeds'].tolist() == ['3', '3', '', '']
    assert any('test-set AUROC' in n for n in notes) and any('ReplayCAD, IJCAI 2025' in n for n in notes)
    ct = class_final_table(runs)
    v = [r['class_matrices']['image_auroc'][-1][r['classes'].index('zipper')] for r in replay]
    assert ct.loc['zipper', 'stfpm · replay (protocol=mvtec_ucad15)'] == f'{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}'
    out = subprocess.run([sys.executable, '-m', 'clad.aggregate', str(tmp_path), '--out', str(tmp_path / 'agg')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'Protocol mvtec_ucad15:' in out.stdout and f"| final mean image AUROC | {t.loc['final mean image AUROC', 'stfpm · multi_task']} |" in out.stdout
    assert (tmp_path / 'agg' / 'protocol_mvtec_ucad15.md').read_text().startswith('|  | stfpm · multi_task | stfpm · replay |')
    assert (tmp_path / 'agg' / 'tidy_per_class.csv').read_text().startswith('model,strategy,variant,seed,step,class,task,metric,value\n')
