"""bench/gpu_check.py's logic, on the CPU: its device checks must see a tensor off the device wherever a model keeps it,
and it must refuse clearly without CUDA. (The check itself runs on a GPU machine: bench/gpu_check.sh.)"""
import importlib.util
import subprocess
import sys

import pytest
import torch
from torch import nn

from clad.config import project_root

ROOT = project_root()
spec = importlib.util.spec_from_file_location('gpu_check', ROOT/'bench'/'gpu_check.py')
gc = importlib.util.module_from_spec(spec); spec.loader.exec_module(gc)
CUDA = torch.device('cuda')


class Keeper(nn.Module):
    "Tensors in every place a model keeps them: parameter, buffer, plain attribute, list and dict of a submodule."
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2)); self.register_buffer('stats', torch.zeros(3))
        self.bank = torch.zeros(4, 2); self.child = nn.Module(); self.child.banks = [torch.zeros(1), {'t0': torch.zeros(1)}]


def test_misplaced_finds_every_tensor_off_the_device():
    found = gc.misplaced(Keeper(), CUDA)  # everything is on the CPU, so everything is off 'cuda'
    assert sorted(f.split(' ')[0] for f in found) == ['bank', 'child.banks[0]', "child.banks[1]['t0']", 'stats', 'w']
    assert gc.misplaced(Keeper(), torch.device('cpu')) == []


def test_predict_watch_flags_tensors_off_the_device():
    from clad.models.base import AnomalyModel
    class Flat(AnomalyModel):
        kind = 'memory'
        def __init__(self): super().__init__(); self.register_buffer('b', torch.zeros(1))
        def _predict(self, x): return x.mean((1, 2, 3)), x.mean(1)
    original = AnomalyModel.predict
    with gc.PredictWatch(CUDA) as watch: Flat().predict(torch.zeros(2, 3, 8, 8))
    assert watch.calls == 1 and watch.bad == ['Flat.predict -> scores on cpu, maps on cpu']
    assert AnomalyModel.predict is original  # restored
    with gc.PredictWatch(torch.device('cpu')) as watch: Flat().predict(torch.zeros(2, 3, 8, 8))
    assert watch.calls == 1 and watch.bad == []


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_refuses_without_cuda():
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'gpu_check.py')], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'no CUDA device' in r.stderr and '--device cpu --dry-run' in r.stderr
    r = subprocess.run(['bash', str(ROOT/'bench'/'gpu_check.sh')], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'no CUDA device' in r.stderr


def test_arguments():
    a = gc.parse_args(['--device', 'cpu', '--dry-run', '--models', 'padim,stfpm'])
    assert (a.batches, a.img_size, a.models) == (1, 64, ['padim', 'stfpm'])
    with pytest.raises(SystemExit): gc.parse_args(['--models', 'resnet'])
