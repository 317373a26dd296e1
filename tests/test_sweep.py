"""Sweeps end to end through submitit's local executor: kill, resume without redoing finished points, a failing point;
a sweep file changed after points finished; Slurm polling without accounting."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clad.data import write_tiny_mvtec
from clad.sweep import QueueWatcher, load_sweep, read_state, sweep_points, write_stub_template


def test_sweep_interrupted_and_resumed(tmp_path):
    data = write_tiny_mvtec(tmp_path / 'data', categories=['bottle', 'carpet'], n_train=6, n_test_good=2, n_test_defect=2, size=32)
    run_json = tmp_path / 'run.json'
    run_json.write_text(json.dumps(dict(backbone='resnet18', gallery_size=1, batch_size=4, mem_size=4, early_stopping=False)))
    # strategy 'nope' is an invalid value: those points fail inside the notebook, the others still run
    spec = dict(name='tiny', grid=dict(model=['stfpm'], strategy=['naive', 'nope'], seed=[0, 1]),
                fixed=dict(config=str(run_json), data_path=str(data), num_tasks=2, img_size=32, num_epochs=1,
                           pretrained='false', device='cpu'),
                executor='local', max_workers=1, output_dir=str(tmp_path / 'out'))
    sweep_json = tmp_path / 'sweep_tiny.json'
    sweep_json.write_text(json.dumps(spec))
    sw = load_sweep(sweep_json)
    state_file = sw.folder / 'state.json'
    cmd = [sys.executable, '-m', 'clad.sweep', str(sweep_json), '--poll', '0.5']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()

    def n_done():
        try: return sum(p['status'] == 'done' for p in json.loads(state_file.read_text())['points'].values())
        except (OSError, ValueError, KeyError): return 0
    while n_done() < 1 and proc.poll() is None and time.time() - t0 < 600: time.sleep(0.2)
    assert proc.poll() is None, f'the sweep ended before it could be killed:\n{proc.stdout.read()}'
    proc.send_signal(signal.SIGKILL); proc.wait()  # the hardest interruption: no clean-up at all
    first = [p for p in sweep_points(sw) if read_state(sw)['points'][p.name]['status'] == 'done']
    assert len(first) == 1
    stamp = {p.name: ((p.run_dir / 'results.json').stat().st_mtime, p.notebook.stat().st_mtime) for p in first}

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 1, out.stdout + out.stderr  # 1: some points failed
    # the point that was running when the sweep was killed may have finished on its own since (its job is a separate
    # process); either way every finished point is reused and only the others run
    m = re.search(r'(\d) done, (\d) to run', out.stdout)
    assert m and int(m[1]) >= 1 and int(m[1]) + int(m[2]) == 4, out.stdout
    state = read_state(sw)['points']
    assert {k: v['status'] for k, v in state.items()} == {
        'stfpm_naive_seed0': 'done', 'stfpm_naive_seed1': 'done', 'stfpm_nope_seed0': 'failed', 'stfpm_nope_seed1': 'failed'}
    assert "sample_strategy" in state['stfpm_nope_seed0']['error'] and 'CladError' in state['stfpm_nope_seed0']['error']
    for p in first:  # the finished point was not redone
        assert ((p.run_dir / 'results.json').stat().st_mtime, p.notebook.stat().st_mtime) == stamp[p.name]
    for name in ('stfpm_naive_seed0', 'stfpm_naive_seed1'):
        r = json.loads((Path(state[name]['run_dir']) / 'results.json').read_text())
        assert r['status'] == 'complete' and len(r['tasks']) == 2
        assert Path(state[name]['notebook']).exists()
    # nothing left to run; failed points are only retried on request
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert '2 done, 0 to run' in again.stdout, again.stdout
    # no orphaned job processes left behind
    assert not [p for p in Path('/proc').glob('[0-9]*') if _is_our_job(p, sw.folder)]


def _is_our_job(proc_dir, folder):
    try: return str(folder) in (proc_dir / 'cmdline').read_text()
    except OSError: return False


def test_changed_parameters_refused_then_overwritten(tmp_path):
    "Changing `fixed` after points finished: refused with the change named, nothing rerun or rewritten; --overwrite redoes them."
    tpl = write_stub_template(tmp_path / 'stub.ipynb')
    spec = dict(name='stub', grid=dict(model=['stfpm'], strategy=['naive'], seed=[0, 1]), fixed=dict(num_epochs=1),
                notebook=str(tpl), max_workers=2, output_dir=str(tmp_path / 'out'))
    sweep_json = tmp_path / 'sweep.json'
    sweep_json.write_text(json.dumps(spec))
    cmd = [sys.executable, '-m', 'clad.sweep', str(sweep_json), '--poll', '0.2']
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and '2 done, 0 failed' in first.stdout, first.stdout + first.stderr
    sw = load_sweep(sweep_json)
    pts = sweep_points(sw)
    stamp = {p.name: ((p.run_dir / 'results.json').stat().st_mtime_ns, p.notebook.stat().st_mtime_ns) for p in pts}
    state_before = sw.folder.joinpath('state.json').read_text()

    sweep_json.write_text(json.dumps(dict(spec, fixed=dict(num_epochs=2))))
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    for p in pts: assert f"  {p.name} ({p.run_dir}): num_epochs 1 → 2\n" in refused.stderr, refused.stderr
    assert '--overwrite' in refused.stderr and "new 'name' and 'output_dir'" in refused.stderr
    assert {p.name: ((p.run_dir / 'results.json').stat().st_mtime_ns, p.notebook.stat().st_mtime_ns) for p in pts} == stamp
    assert sw.folder.joinpath('state.json').read_text() == state_before
    dry = subprocess.run(cmd + ['--dry-run'], capture_output=True, text=True, timeout=300)
    assert dry.stdout.count(' changed ') == 2 and '(num_epochs 1 → 2)' in dry.stdout, dry.stdout

    again = subprocess.run(cmd + ['--overwrite'], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and '0 done, 2 to run' in again.stdout and '2 done, 0 failed' in again.stdout, again.stdout + again.stderr
    for p in pts:
        assert json.loads((p.run_dir / 'results.json').read_text())['num_epochs'] == 2  # the new parameters' results
        assert read_state(sw)['points'][p.name]['params']['num_epochs'] == 2
        assert "num_epochs = 2" in p.notebook.read_text()  # papermill's injected parameters: a fresh notebook
    assert '2 done, 0 to run' in subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout


def test_slurm_watcher_without_accounting_prints_nothing(tmp_path, monkeypatch, capfd):
    "sacct failing (accounting disabled) at every poll: the watcher falls back to squeue, quietly."
    (tmp_path / 'sacct').write_text('#!/bin/sh\necho "sacct: error: Slurm accounting storage is disabled" >&2\necho called >> "$0.calls"\nexit 1\n')
    (tmp_path / 'squeue').write_text('#!/bin/sh\necho "7_1|CONFIGURING"\n')
    for f in ('sacct', 'squeue'): (tmp_path / f).chmod(0o755)
    monkeypatch.setenv('PATH', f"{tmp_path}:{os.environ['PATH']}")
    w = QueueWatcher()
    for j in ('7_0', '7_1'): w.register_job(j)
    for _ in range(3): w.update()
    assert [w.get_state(j, mode='cache') for j in ('7_0', '7_1')] == ['ENDED', 'RUNNING']  # CONFIGURING is not an end
    assert (tmp_path / 'sacct.calls').read_text().count('called') == 1  # given up after its first failure
    out, err = capfd.readouterr()
    assert out == '' and err == '', (out, err)


def test_the_shipped_sweep_files_load_with_their_points():
    "Every configurations/sweep_*.json is valid, and the study files hold the points their docs promise."
    from clad.config import project_root
    files = sorted((project_root() / 'configurations').glob('sweep_*.json'))
    assert {f.name for f in files} >= {'sweep_tiny.json', 'sweep_embedded.json', 'sweep_embedded_1h.json', 'sweep_methods.json'}
    points = {f.stem: sweep_points(load_sweep(f)) for f in files}
    assert len(points['sweep_embedded']) == len(points['sweep_embedded_1h']) == 55  # 5 trained × 9 + 2 memory-bank × 5
    assert len(points['sweep_methods']) == 63  # 3 models × 7 methods × 3 seeds
    epochs = {(p.params['model'], p.params['num_epochs']) for p in points['sweep_embedded_1h']}
    assert epochs == {('efficientad', 1), ('draem', 2)} | {(m, 3) for m in ('stfpm', 'patchcore', 'padim', 'cfa', 'fastflow')}
