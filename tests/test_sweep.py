"""A real sweep end to end through submitit's local executor: kill, resume without redoing finished points, a failing point."""
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
from clad.sweep import load_sweep, read_state, sweep_points


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
