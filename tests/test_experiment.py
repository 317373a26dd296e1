"""The experiment loop end to end: resume after kill -9, strategies, refusals, W&B key hygiene."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clad.config import load_config
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment

TINY = dict(img_size=32, backbone='resnet18', pretrained=False, num_epochs=2, batch_size=4, mem_size=6, gallery_size=1,
            device='cpu', patience=5)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'cable', 'carpet'], n_train=8, n_test_good=3, n_test_defect=3, size=32)
    return root


def cfg_for(tiny_data, out, **kw):
    return load_config('stfpm', overrides=dict(TINY, data_path=str(tiny_data), output_dir=str(out), **kw))


def cli(tiny_data, out, strategy='replay'):
    sets = dict(TINY, data_path=str(tiny_data), output_dir=str(out))
    args = [sys.executable, '-m', 'clad.run', '--model', 'stfpm', '--strategy', strategy, '--seed', '1', '--no-progress']
    for k, v in sets.items(): args += ['--set', f'{k}={json.dumps(v) if not isinstance(v, str) else v}']
    return args


def read(out, strategy='replay'):
    return json.loads((Path(out) / 'stfpm' / strategy / 'seed1' / 'results.json').read_text())


def test_resume_after_kill_equals_uninterrupted(tiny_data, tmp_path):
    ref = subprocess.run(cli(tiny_data, tmp_path / 'a'), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    expected = read(tmp_path / 'a')
    assert expected['status'] == 'complete'
    ck = tmp_path / 'b' / 'stfpm' / 'replay' / 'seed1' / 'checkpoint.pt'
    # kill -9 as soon as the first step's checkpoint exists (mid-run: steps 2 and 3 are still to come)
    proc = subprocess.Popen(cli(tiny_data, tmp_path / 'b'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not ck.exists() and proc.poll() is None and time.time() - t0 < 240: time.sleep(0.05)
    assert proc.poll() is None, 'the run finished before it could be killed'
    proc.send_signal(signal.SIGKILL); proc.wait()
    partial = read(tmp_path / 'b')
    assert partial['status'] == 'running'
    # a second kill at a later moment, then let it finish
    proc = subprocess.Popen(cli(tiny_data, tmp_path / 'b'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5); proc.send_signal(signal.SIGKILL); proc.wait()
    done = subprocess.run(cli(tiny_data, tmp_path / 'b'), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'resuming' in done.stdout
    got = read(tmp_path / 'b')
    assert got['status'] == 'complete'
    assert got['matrices'] == expected['matrices']
    assert got['pooled'] == expected['pooled']
    assert got['strategy'] == expected['strategy']
    # no temporary files left behind by the atomic writes
    assert not [p for p in (tmp_path / 'b').rglob('*.tmp')]


def test_finished_run_is_not_redone(tiny_data, tmp_path):
    cfg = cfg_for(tiny_data, tmp_path, sample_strategy='naive', num_tasks=2)
    first = Experiment(cfg, progress=False).run()
    msgs = []
    again = Experiment(cfg, progress=False, log=msgs.append).run()
    assert any('already complete' in m for m in msgs)
    assert again['matrices'] == first['matrices']


def test_changed_config_refuses_to_resume(tiny_data, tmp_path):
    exp = Experiment(cfg_for(tiny_data, tmp_path, sample_strategy='naive', num_tasks=2), progress=False)
    exp.run()
    (exp.run_dir / 'results.json').unlink()  # pretend it crashed after the last checkpoint
    other = Experiment(cfg_for(tiny_data, tmp_path, sample_strategy='naive', num_tasks=2, lr=0.01), progress=False)
    with pytest.raises(CladError, match=r'holds an unfinished run with a different configuration or data: lr: \S+ → 0\.01\.'):
        other.run()
    (exp.run_dir / 'run.json').unlink()  # an older run folder: the checkpoint's own record of the run is compared too
    with pytest.raises(CladError, match=r'unfinished run .*: lr: \S+ → 0\.01\.'):
        other.run()
    assert not (exp.run_dir / 'run.json').exists()  # a refused run leaves the folder's record as it was
    # with neither results nor a checkpoint nothing would be reused: the folder is taken (as after a sweep's overwrite)
    exp.checkpoint_path.unlink()
    assert other.run()['status'] == 'complete'
    assert json.loads((exp.run_dir / 'run.json').read_text())['config']['lr'] == 0.01


@pytest.mark.parametrize('strategy,rows', [('naive', 3), ('multi_task', 1), ('single_model', 3), ('cumulative', 3)])
def test_strategies_run_end_to_end(tiny_data, tmp_path, strategy, rows):
    rec = Experiment(cfg_for(tiny_data, tmp_path, sample_strategy=strategy), progress=False).run()
    assert rec['status'] == 'complete'
    assert len(rec['matrices']['image_auroc']) == rows
    assert all(len(r) == 3 for r in rec['matrices']['image_auroc'])
    assert all(v is not None for v in rec['pooled']['image_auroc'])
    if strategy == 'single_model': assert rec['cost']['param_mb'] > 0


def test_cl_strategy_refused_for_stfpm(tiny_data, tmp_path):
    with pytest.raises(CladError, match="'cl' is not supported by model 'stfpm'.*it supports naive, replay"):
        cfg_for(tiny_data, tmp_path, sample_strategy='cl')


def test_two_runs_write_to_different_folders(tiny_data, tmp_path):
    a = Experiment(cfg_for(tiny_data, tmp_path, sample_strategy='naive', seed=0, num_tasks=1), progress=False)
    b = Experiment(cfg_for(tiny_data, tmp_path, sample_strategy='naive', seed=2, num_tasks=1), progress=False)
    assert a.run_dir != b.run_dir
    a.run(); b.run()
    assert (a.run_dir / 'results.json').exists() and (b.run_dir / 'results.json').exists()


def test_wandb_offline_never_writes_the_key(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    secret = 'clad-test-secret-key-0123456789abcdef0123'
    monkeypatch.setenv('WANDB_API_KEY', secret)
    monkeypatch.setenv('WANDB_DIR', str(tmp_path / 'wandb_home'))
    monkeypatch.setenv('WANDB_CONFIG_DIR', str(tmp_path / 'wandb_config'))
    monkeypatch.setenv('WANDB_CACHE_DIR', str(tmp_path / 'wandb_cache'))
    cfg = cfg_for(tiny_data, tmp_path / 'out', sample_strategy='naive', num_tasks=2, wandb_mode='offline')
    logs = []
    rec = Experiment(cfg, progress=False, log=logs.append).run()
    assert rec['status'] == 'complete'
    assert secret not in json.dumps(rec) and secret not in '\n'.join(logs)
    assert list((tmp_path / 'out').rglob('*.wandb')), 'W&B did not log offline (the test would prove nothing)'
    for p in tmp_path.rglob('*'):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), f'the W&B key leaked into {p}'
