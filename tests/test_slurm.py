"""Sweeps on a real Slurm cluster: a one-node cluster (tools/slurm_cluster.sh, no accounting) runs a two-point sweep as
one array job; one job is killed mid-way with `scancel`, the sweep restarted, and the results must equal the local
executor's. Slow and needs root and the Debian packages slurm-wlm + munge: run by `make slurm-test` (CLAD_TEST_SLURM=1)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get('CLAD_TEST_SLURM') != '1', reason='needs a Slurm cluster: run `make slurm-test`')

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / 'tools' / 'slurm_cluster.sh'


@pytest.fixture(scope='module')
def slurm_cluster(tmp_path_factory):
    "Start the one-node cluster for this module's tests and always stop it afterwards."
    env = dict(os.environ, CLAD_SLURM_DIR=os.environ.get('CLAD_SLURM_DIR', str(tmp_path_factory.mktemp('slurm'))))
    old = {k: os.environ.get(k) for k in ('CLAD_SLURM_DIR', 'SLURM_CONF')}
    try:
        out = subprocess.run([str(CLUSTER), 'start'], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        os.environ['CLAD_SLURM_DIR'] = env['CLAD_SLURM_DIR']
        os.environ['SLURM_CONF'] = str(Path(env['CLAD_SLURM_DIR']) / 'slurm.conf')
        yield Path(env['CLAD_SLURM_DIR'])
    finally:
        subprocess.run([str(CLUSTER), 'stop'], env=env, timeout=120)
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def _spec(tmp_path, executor, out):
    from clad.data import write_tiny_mvtec
    data = tmp_path / 'data'
    if not data.exists(): write_tiny_mvtec(data, categories=['bottle', 'carpet'], n_train=12, n_test_good=2, n_test_defect=2, size=32)
    run_json = tmp_path / 'run.json'
    run_json.write_text(json.dumps(dict(backbone='resnet18', gallery_size=1, batch_size=4, early_stopping=False)))
    return dict(name='two', grid=dict(model=['stfpm'], strategy=['naive'], seed=[0, 1]),
                fixed=dict(config=str(run_json), data_path=str(data), num_tasks=2, img_size=32, num_epochs=6,
                           pretrained='false', device='cpu'),
                executor=executor, max_workers=2, output_dir=str(tmp_path / out),
                # one CPU per job (= the local executor's share of this 2-core machine with max_workers 2: same threads)
                slurm=dict(partition='debug', time_min=30, gpus_per_node=0, cpus_per_task=1, mem_gb=1, array_parallelism=2))


def _write(path, spec):
    path.write_text(json.dumps(spec)); return path


def _queue():
    return subprocess.run(['squeue', '-h', '-r', '--me', '-o', '%i|%T'], capture_output=True, text=True).stdout.split()


def test_slurm_sweep_killed_job_restarted_equals_local(slurm_cluster, tmp_path):
    from clad.sweep import load_sweep, read_state, sweep_points
    cli = lambda p, *a: [sys.executable, '-m', 'clad.sweep', str(p), '--poll', '0.5', *a]
    # the reference: the same two points through the local executor
    local_json = _write(tmp_path / 'local.json', _spec(tmp_path, 'local', 'local'))
    ref = subprocess.run(cli(local_json), capture_output=True, text=True, timeout=1200)
    assert ref.returncode == 0 and '2 done, 0 failed' in ref.stdout, ref.stdout + ref.stderr

    slurm_json = _write(tmp_path / 'slurm.json', _spec(tmp_path, 'slurm', 'slurm'))
    sw = load_sweep(slurm_json)
    victim = sweep_points(sw)[0]
    proc = subprocess.Popen(cli(slurm_json), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # kill the first point's job mid-way: its first task is checkpointed, the second not finished
        t0 = time.time()
        while not (victim.run_dir / 'checkpoint.pt').exists() and proc.poll() is None and time.time() - t0 < 900: time.sleep(0.1)
        job_id = read_state(sw)['points'][victim.name].get('job_id')
        status = json.loads((victim.run_dir / 'results.json').read_text()).get('status') if (victim.run_dir / 'results.json').exists() else None
        assert proc.poll() is None and job_id and status != 'complete', f'no running job to kill ({job_id}, {status})'
        subprocess.run(['scancel', job_id], check=True)
        first_out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    assert proc.returncode == 1, first_out  # 1: a point failed
    state = read_state(sw)['points']
    assert state[victim.name]['status'] == 'failed', first_out  # done here: the job finished before scancel took effect
    err = state[victim.name]['error']  # the kernel killed by scancel's SIGTERM, or the whole job gone without a result
    assert 'the job was terminated (SIGTERM' in err or (f'job {job_id} failed' in err and 'has not produced any output' in err), err
    assert [v['status'] for k, v in state.items() if k != victim.name] == ['done']
    # polling a cluster without accounting is quiet: no batch() warning, no sacct error at every poll
    for noise in ('RuntimeWarning', 'No submission happened', 'sacct', 'accounting'): assert noise not in first_out, first_out
    assert json.loads((victim.run_dir / 'results.json').read_text())['status'] == 'running'

    again = subprocess.run(cli(slurm_json, '--retry-failed'), capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout + again.stderr
    assert '1 done, 1 to run' in again.stdout and '2 done, 0 failed' in again.stdout, again.stdout
    for noise in ('RuntimeWarning', 'sacct', 'accounting'): assert noise not in again.stdout + again.stderr, again.stdout + again.stderr
    assert 'resuming' in victim.notebook.read_text() and 'after step 1/2' in victim.notebook.read_text()  # resumed, not redone

    local = {p.name: p.run_dir for p in sweep_points(load_sweep(local_json))}
    for p in sweep_points(sw):
        got, want = (json.loads((d / 'results.json').read_text()) for d in (p.run_dir, local[p.name]))
        assert got['status'] == want['status'] == 'complete'
        assert got['matrices'] == want['matrices'], p.name
        assert got['pooled'] == want['pooled'], p.name
        assert read_state(sw)['points'][p.name]['host']
    assert _queue() == []  # nothing left on the cluster
