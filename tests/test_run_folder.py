"""A run folder holds one run — checked in real `clad-run` processes: refusals of another configuration or other data,
reuse, overwrite, the folder lock, damaged files, a full disk, leftovers of interrupted writes, SIGINT and SIGTERM."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clad.data import write_tiny_mvtec

TINY = dict(img_size=32, backbone='resnet18', pretrained=False, num_epochs=1, batch_size=4, gallery_size=1, device='cpu',
            patience=5, num_tasks=2)
ENV = dict(os.environ, OMP_NUM_THREADS='1')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'cable', 'carpet'], n_train=8, n_test_good=3, n_test_defect=3, size=32)
    return root


def command(data, out, *flags, **sets) -> list:
    "The `clad-run` command line of a tiny STFPM run (naive, seed 1) into `out`."
    s = dict(TINY, data_path=str(data), output_dir=str(out), **sets)
    cmd = [sys.executable, '-m', 'clad.run', '--model', 'stfpm', '--strategy', 'naive', '--seed', '1', *flags]
    for k, v in s.items(): cmd += ['--set', f'{k}={v if isinstance(v, str) else json.dumps(v)}']
    return cmd


def clad_run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, **kw)


def folder(out) -> Path: return Path(out) / 'stfpm' / 'naive' / 'seed1'


def refusal(p: subprocess.CompletedProcess) -> str:
    "The one stderr line of a refused run (exit status 2, no traceback)."
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert 'Traceback' not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('clad-run: error: '), p.stderr
    return lines[0]


@pytest.fixture(scope='module')
def finished(data, tmp_path_factory):
    "A finished two-step run folder (copied by each test that needs one)."
    out = tmp_path_factory.mktemp('finished')
    p = clad_run(command(data, out))
    assert p.returncode == 0, p.stderr
    assert p.stderr == '', p.stderr  # no bar (stderr is a pipe), no warning
    return folder(out)


def copy_of(finished, tmp_path) -> Path:
    shutil.copytree(finished, folder(tmp_path / 'out'))
    return tmp_path / 'out'


def test_changed_config_on_finished_folder_is_refused(data, finished, tmp_path):
    out = copy_of(finished, tmp_path); before = (folder(out) / 'results.json').read_bytes()
    lr = json.loads(before)['config']['lr']
    msg = refusal(clad_run(command(data, out, num_epochs=3, lr=0.01)))
    assert f'{folder(out)} holds a finished run with a different configuration or data: num_epochs: 1 → 3; lr: {lr} → 0.01.' in msg, msg
    assert 'overwrite=True (clad-run --overwrite)' in msg and 'output_dir' in msg
    assert (folder(out) / 'results.json').read_bytes() == before


def test_changed_data_is_refused(data, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    edited = tmp_path / 'edited'; shutil.copytree(data, edited)
    img = next((edited / 'bottle' / 'train' / 'good').iterdir())
    Image.fromarray(255 - np.asarray(Image.open(img))).save(img)  # one training image changed
    old = json.loads((folder(out) / 'results.json').read_text())['data']['fingerprint']
    msg = refusal(clad_run(command(edited, out)))
    assert re.search(rf'different configuration or data: data fingerprint: {old[:12]}… → [0-9a-f]{{12}}…\. ', msg), msg
    assert 'data_path' not in msg.split('data:')[1].split('.')[0]  # the path is no difference, the content is


def test_same_run_is_reused_also_from_a_moved_dataset(data, finished, tmp_path):
    out = copy_of(finished, tmp_path); before = {p.name: p.read_bytes() for p in folder(out).iterdir() if p.is_file()}
    moved = tmp_path / 'moved'; shutil.copytree(data, moved)
    p = clad_run(command(moved, out))
    assert p.returncode == 0, p.stderr
    assert p.stderr == '' and 'already complete' in p.stdout, (p.stdout, p.stderr)
    assert {p.name: p.read_bytes() for p in folder(out).iterdir() if p.is_file()} == before


def test_overwrite_redoes_with_the_new_config(data, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    p = clad_run(command(data, out, '--overwrite', num_epochs=2))
    assert p.returncode == 0, p.stderr
    assert 'already complete' not in p.stdout and p.stdout.count('] step ') == 2, p.stdout
    res = json.loads((folder(out) / 'results.json').read_text())
    assert res['config']['num_epochs'] == 2 and [len(t['train_loss']) for t in res['training']] == [2, 2]
    assert json.loads((folder(out) / 'run.json').read_text())['config']['num_epochs'] == 2
    # and the folder now holds the new run: the old configuration is the one refused
    assert 'num_epochs: 2 → 1' in refusal(clad_run(command(data, out)))


def test_second_process_fails_at_once_naming_the_holder(data, tmp_path):
    out = tmp_path / 'out'; run_dir = folder(out)
    holder = subprocess.Popen(command(data, out, num_tasks=1, num_epochs=100000, early_stopping=False), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (run_dir / 'run.json').exists() and holder.poll() is None and time.time() - t0 < 120: time.sleep(0.05)
        assert holder.poll() is None, holder.stderr.read()
        assert json.loads((run_dir / '.lock').read_text())['pid'] == holder.pid
        planted = run_dir / '.checkpoint.pt.abcd1234.tmp'; planted.write_bytes(b'x')  # as if from a killed write
        msg = refusal(clad_run(command(data, out, num_tasks=1, num_epochs=2)))
        assert holder.poll() is None, 'the second process waited for the first'
        assert f'{run_dir} is in use by another run: pid {holder.pid} on {socket.gethostname()}' in msg, msg
        assert planted.exists(), 'a process without the lock removed files in the folder'
    finally:
        holder.send_signal(signal.SIGTERM); holder.wait(timeout=60)
    assert holder.returncode == 143
    assert holder.stderr.read().strip() == 'clad-run: interrupted (SIGTERM) after step 0/1; rerun the same command to resume'
    assert not (run_dir / '.lock').exists()


def test_stale_lock_is_taken_over(data, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    gone = subprocess.Popen([sys.executable, '-c', 'pass']); gone.wait()  # a pid that no longer runs
    (folder(out) / '.lock').write_text(json.dumps(dict(pid=gone.pid, host=socket.gethostname(), started='2026-01-01 00:00:00')))
    p = clad_run(command(data, out))
    assert p.returncode == 0, p.stderr
    assert f'taking over the lock of pid {gone.pid} on {socket.gethostname()}' in p.stdout and 'already complete' in p.stdout, p.stdout
    assert not (folder(out) / '.lock').exists()


def test_leftover_temporary_files_are_removed(data, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    left = [folder(out) / '.checkpoint.pt.q1w2e3r4.tmp', folder(out) / 'figures' / '.matrices.png.zx_9cv8b.tmp']
    left[0].write_bytes(b'\0' * 2**23); left[1].write_bytes(b'x')
    kept = folder(out) / 'notes.tmp'; kept.write_text('mine')
    p = clad_run(command(data, out))
    assert p.returncode == 0, p.stderr
    assert 'removed 2 temporary file(s) of an interrupted write' in p.stdout, p.stdout
    assert not any(f.exists() for f in left) and kept.exists()


@pytest.mark.parametrize('damage', ['garbage checkpoint', 'truncated checkpoint', 'garbage results'])
def test_damaged_file_is_named_with_the_remedy(data, finished, tmp_path, damage):
    out = copy_of(finished, tmp_path); run_dir = folder(out); ck = run_dir / 'checkpoint.pt'
    if damage.endswith('checkpoint'):
        (run_dir / 'results.json').unlink()  # as if killed after the checkpoint: the next run resumes from it
        ck.write_bytes(os.urandom(4096) if damage.startswith('garbage') else ck.read_bytes()[:ck.stat().st_size // 2])
        msg = refusal(clad_run(command(data, out)))
        assert f'{ck}: cannot read this checkpoint, it is damaged or truncated (' in msg, msg
        assert 'delete it to restart the run from its first step, or set overwrite=True' in msg
    else:
        (run_dir / 'results.json').write_bytes(b'\x89{"status": "compl')
        msg = refusal(clad_run(command(data, out)))
        assert f"{run_dir / 'results.json'}: cannot read the results (" in msg and 'delete it, or set overwrite=True' in msg, msg


FULL_DISK = '''
import errno, io, sys, torch
real_save = torch.save
class FullDisk(io.RawIOBase):  # room for 4 KiB, then the disk is full
    def __init__(self, f): self.f, self.room = f, 4096
    def writable(self): return True
    def write(self, b):
        if len(b) > self.room: raise OSError(errno.ENOSPC, 'No space left on device')
        self.room -= len(b); return self.f.write(b)
torch.save = lambda obj, f, *a, **k: real_save(obj, FullDisk(f), *a, **k)
from clad.run import main
sys.exit(main(sys.argv[1:]))
'''


def test_full_disk_while_checkpointing(data, tmp_path):
    out = tmp_path / 'out'
    msg = refusal(clad_run([sys.executable, '-c', FULL_DISK, *command(data, out)[3:]]))
    ck = folder(out) / 'checkpoint.pt'
    assert f'{ck}: no space left on the device (' in msg and 'output_dir' in msg, msg
    assert 'inline_container' not in msg
    assert not ck.exists() and not list(folder(out).rglob('*.tmp'))


@pytest.fixture(scope='module')
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp('uninterrupted')
    p = clad_run(command(data, out, num_tasks=3, num_epochs=3))
    assert p.returncode == 0, p.stderr
    return json.loads((folder(out) / 'results.json').read_text())


@pytest.mark.parametrize('sig,status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_is_one_line_and_resumes(data, uninterrupted, tmp_path, sig, status):
    out = tmp_path / 'out'; ck = folder(out) / 'checkpoint.pt'
    proc = subprocess.Popen(command(data, out, num_tasks=3, num_epochs=3), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not ck.exists() and proc.poll() is None and time.time() - t0 < 240: time.sleep(0.02)
    assert proc.poll() is None, 'the run finished before it could be interrupted'
    proc.send_signal(sig); _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, (proc.returncode, err)
    m = re.fullmatch(rf'clad-run: interrupted \({sig.name}\) after step ([123])/3; rerun the same command to resume\n', err)
    assert m, err
    # the checkpoint of the last finished step is intact and is the step the line names
    assert torch.load(ck, map_location='cpu', weights_only=False)['state']['next_step'] == int(m[1])
    done = clad_run(command(data, out, num_tasks=3, num_epochs=3))
    assert done.returncode == 0 and done.stderr == '', done.stderr
    got = json.loads((folder(out) / 'results.json').read_text())
    assert got['status'] == 'complete'
    assert got['matrices'] == uninterrupted['matrices'] and got['pooled'] == uninterrupted['pooled']
    assert not list(folder(out).rglob('*.tmp')) and not (folder(out) / '.lock').exists()
