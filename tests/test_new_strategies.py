"""EWC, LwF, DER++ and compressed replay end to end: each reduces to the strategy it extends when its own term is off
(so the term is what makes the difference), each changes the results when it is on, and all four run through the
command line for every trained model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clad.config import load_config
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment
from clad.models.efficientad import distill_teacher
from clad.strategies import diagonal_fisher

TINY = dict(img_size=32, backbone='resnet18', pretrained=False, num_epochs=2, batch_size=4, mem_size=6, gallery_size=0,
            device='cpu', patience=5, num_tasks=3, seed=2, eval_batch_size=8)
NEW = ('ewc', 'lwf', 'derpp', 'compressed_replay')
TRAINED = ('stfpm', 'fastflow', 'cfa', 'draem', 'efficientad')


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'cable', 'carpet'], n_train=8, n_test_good=3, n_test_defect=3, size=32)
    return root


def run(data, out, model='stfpm', **kw) -> dict:
    cfg = load_config(model, overrides=dict(TINY, data_path=str(data), output_dir=str(out), **kw))
    return Experiment(cfg, progress=False, log=lambda *_: None).run()


def results_of(rec: dict) -> dict:
    return dict(matrices=rec['matrices'], pooled=rec['pooled'])


def test_ewc_with_lambda_zero_is_naive_and_with_lambda_is_not(tiny_data, tmp_path):
    naive = run(tiny_data, tmp_path/'a', sample_strategy='naive')
    off = run(tiny_data, tmp_path/'b', sample_strategy='ewc', ewc_lambda=0.0)
    on = run(tiny_data, tmp_path/'c', sample_strategy='ewc', ewc_lambda=1e6)
    assert results_of(off) == results_of(naive)
    assert on['matrices']['pixel_auroc'] != naive['matrices']['pixel_auroc']
    assert off['cost']['additional_memory_mb'] == 0
    assert on['training'][0]['extra_loss'] == [] and len(on['training'][1]['extra_loss']) == 2  # no penalty before a task is kept
    # the memory is the Fisher diagonal and the anchor: two float32 copies of the trainable weights
    model = Experiment(load_config('stfpm', overrides=dict(TINY, data_path=str(tiny_data), output_dir=str(tmp_path/'d'))))._new_model(0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert on['cost']['additional_memory_mb'] == pytest.approx(2 * 4 * trainable / 2**20)
    assert on['strategy'][-1]['consolidated_weights'] == trainable


def test_lwf_with_alpha_zero_is_naive_and_with_alpha_is_not(tiny_data, tmp_path):
    naive = run(tiny_data, tmp_path/'a', sample_strategy='naive')
    assert results_of(run(tiny_data, tmp_path/'b', sample_strategy='lwf', lwf_alpha=0.0)) == results_of(naive)
    on = run(tiny_data, tmp_path/'c', sample_strategy='lwf', lwf_alpha=1e4)
    assert on['matrices']['pixel_auroc'] != naive['matrices']['pixel_auroc']
    assert on['training'][0]['extra_loss'] == [] and all(v > 0 for v in on['training'][2]['extra_loss'])
    assert on['cost']['additional_memory_mb'] > 0  # the frozen copy of the model


def test_derpp_with_alpha_zero_beta_one_is_replay(tiny_data, tmp_path):
    replay = run(tiny_data, tmp_path/'a', sample_strategy='replay')
    off = run(tiny_data, tmp_path/'b', sample_strategy='derpp', derpp_alpha=0.0, derpp_beta=1.0)
    assert results_of(off) == results_of(replay)
    assert off['cost']['additional_memory_mb_per_step'] == replay['cost']['additional_memory_mb_per_step']
    assert [s['per_task'] for s in off['strategy']] == [s['per_task'] for s in replay['strategy']]
    on = run(tiny_data, tmp_path/'c', sample_strategy='derpp', derpp_alpha=1e3, derpp_beta=0.5)
    assert on['matrices']['pixel_auroc'] != replay['matrices']['pixel_auroc']
    assert on['cost']['additional_memory_mb'] > replay['cost']['additional_memory_mb']  # the stored outputs on top
    assert on['strategy'][-1]['stored_outputs'] == sum(on['strategy'][-1]['per_task'].values())


def test_compressed_replay_keeps_within_its_byte_budget(tiny_data, tmp_path):
    budget_mb = 4000 / 2**20
    rec = run(tiny_data, tmp_path, sample_strategy='compressed_replay', mem_size_mb=budget_mb, replay_scale=1.0)
    run_dir = Path(rec['run_dir'])
    kept = json.loads((run_dir/'replay'/'step2.json').read_text())['memory']
    files = [Path(p) for v in kept.values() for p in v]
    assert files and all(f.is_file() and f.suffix == '.jpg' and run_dir in f.parents for f in files)
    assert rec['cost']['additional_memory_mb'] == pytest.approx(sum(f.stat().st_size for f in files) / 2**20)
    assert all(mb <= budget_mb for mb in rec['cost']['additional_memory_mb_per_step'])
    assert set(rec['strategy'][-1]['per_task']) == {'0', '1', '2'} or set(rec['strategy'][-1]['per_task']) == {0, 1, 2}
    assert sum(rec['strategy'][-1]['per_task'].values()) > 4000 // (32 * 32 * 3)  # more than uncompressed images would fit
    # the same run again: reused, not redone; overwrite removes the stored images with the rest
    again = Experiment(load_config('stfpm', overrides=dict(TINY, data_path=str(tiny_data), output_dir=str(tmp_path), sample_strategy='compressed_replay',
                                                          mem_size_mb=budget_mb, replay_scale=1.0)), progress=False, log=lambda *_: None).run()
    assert again['matrices'] == rec['matrices']


def test_memory_models_refuse_the_new_strategies():
    for model in ('patchcore', 'padim'):
        for strategy in NEW:
            with pytest.raises(CladError, match=f"sample_strategy.*{strategy}.*{model}|{model}.*{strategy}"):
                load_config(model, overrides=dict(sample_strategy=strategy))


@pytest.fixture(scope='module')
def teacher(tmp_path_factory, tiny_data):
    path = tmp_path_factory.mktemp('teacher')/'teacher.pth'
    distill_teacher(tiny_data, path, steps=4, backbone='resnet18', out_channels=16, image_size=32, batch_size=4, lr=1e-3,
                    pretrained=False, device='cpu', log=None)
    return path


@pytest.mark.parametrize('model', TRAINED)
def test_new_strategies_run_through_the_cli_for_every_trained_model(tiny_data, teacher, tmp_path, model):
    sets = dict(TINY, data_path=str(tiny_data), output_dir=str(tmp_path), num_tasks=2, num_epochs=1, max_train_batches=2,
                mem_size_mb=0.01)
    if model == 'efficientad':  # its unpadded networks need 64 px at least
        sets.update(img_size=64, out_channels=16, teacher_weights=str(teacher), imagenet_train_path=str(tmp_path/'none'))
    for strategy in NEW:
        args = [sys.executable, '-m', 'clad.run', '--model', model, '--strategy', strategy, '--no-progress']
        for k, v in sets.items(): args += ['--set', f'{k}={json.dumps(v) if not isinstance(v, str) else v}']
        done = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        rec = json.loads((tmp_path/model/strategy/'seed2'/'results.json').read_text())
        assert rec['status'] == 'complete' and rec['strategy'][-1]['name'] == strategy
        assert len(rec['matrices']['image_auroc']) == 2


def test_the_fisher_passes_leave_the_model_as_it_was(tiny_data, tmp_path):
    "EWC estimates its Fisher on a copy: STFPM's batch-norm statistics, its mode and its gradients stay as they were."
    cfg = load_config('stfpm', overrides=dict(TINY, data_path=str(tiny_data), output_dir=str(tmp_path), sample_strategy='ewc'))
    ex = Experiment(cfg, progress=False, log=lambda *_: None)
    model = ex._new_model(0).eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fisher = diagonal_fisher(model, ex.strategy.train_records(ex.steps[0]), cfg, 'cpu', 0)
    assert fisher and sum(f.sum().item() for f in fisher.values()) > 0
    assert [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)] == []
    assert not model.training and all(p.grad is None for p in model.parameters())
