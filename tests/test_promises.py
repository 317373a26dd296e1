"""The README's promises, end to end through the experiment loop, each with exact expected values.

A tiny deterministic probe model makes the values predictable: its image score is the mean of the top half of the input's
first channel plus `OFFSET` times its creation number (so a threshold tells which model answered), its map is that channel
plus the score, it records every training batch's files, the files of its validation batches and of its calibration,
and its only weight `w` grows by exactly 1 per batch (SGD, lr 1, loss -w) while its validation loss is (w - 3)², so the
best epoch is known. `tools/fault_injection.py` plants bugs in a copy of the package and checks that these tests catch them.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from torch import nn

from clad.config import load_config
from clad.data import write_tiny_mvtec
from clad.experiment import Experiment, make_loader
from clad.models.base import AnomalyModel, register_model

OFFSET = 10.0  # score offset per model: model k answers with scores shifted by k * OFFSET
PROBE = 'promise_probe'
TINY = dict(img_size=32, backbone='resnet18', pretrained=False, batch_size=1, eval_batch_size=4, num_epochs=1, device='cpu',
            val_fraction=0.25, early_stopping=False, gallery_size=0, mem_size=4, threshold_quantile=0.75)
CPU = torch.device('cpu')


def probe_outputs(images:torch.Tensor, uid:int) -> tuple[torch.Tensor, torch.Tensor]:
    "The probe's image scores and maps; the test computes its expectations with the same function."
    x = images[:, 0].float(); s = x[:, :16].mean((1, 2))
    return s + OFFSET * uid, x + s[:, None, None] + OFFSET * uid  # the image's score shifts its map: no uint8 plateaus


@dataclasses.dataclass
class ProbeParams:
    "The probe has no parameters of its own."


@register_model(PROBE)
class ProbeModel(AnomalyModel):
    "A deterministic stand-in that records what the loop makes it do."
    kind = 'trained'
    Params = ProbeParams
    supported_strategies = ('naive', 'replay', 'multi_task', 'single_model', 'cumulative', 'ewc', 'lwf', 'derpp', 'compressed_replay')
    created: list = []  # every instance, in creation order (cleared by the `probe` fixture)
    val_target = 3.0

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.uid = len(ProbeModel.created); ProbeModel.created.append(self)
        self.current, self.batches, self.val_paths, self.calibrated = None, [], [], []

    @classmethod
    def from_config(cls, cfg): return cls()
    def configure_optimizer(self): return torch.optim.SGD([self.w], lr=1.0), None
    def begin_task(self, task_index, train_loader=None): self.current = task_index

    def training_step(self, batch):
        self.batches.append((self.current, list(batch['path'])))
        return -self.w  # d(-w)/dw = -1: SGD with lr 1 adds exactly 1 to w per batch

    def validation_loss(self, batch):
        self.val_paths.append((self.current, list(batch['path'])))
        return (self.w.detach() - self.val_target) ** 2

    def calibrate(self, loader):
        self.calibrated.append((self.current, [p for b in loader for p in b['path']]))

    def _predict(self, images): return probe_outputs(images, self.uid)


@pytest.fixture
def probe():
    ProbeModel.created.clear()
    yield ProbeModel
    ProbeModel.created.clear()


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_tiny_mvtec(root, categories=['bottle', 'cable', 'carpet'], n_train=8, n_test_good=4, n_test_defect=4, size=32)
    return root


def config(tiny_data, out, model=PROBE, **kw):
    cfg = load_config('stfpm' if model == PROBE else model, overrides=dict(TINY, data_path=str(tiny_data), output_dir=str(out), **kw))
    if model == PROBE: cfg.architecture = PROBE  # not a configurable model: set after the checks
    return cfg


def run(tiny_data, out, **kw):
    exp = Experiment(config(tiny_data, out, **kw), progress=False, log=lambda s: None)
    return exp, exp.run()


def paths(records) -> set: return {str(r.path) for r in records}


def outputs(records, cfg, uid:int):
    "Scores [N], maps [N,H,W] and labels [N] the probe number `uid` gives `records`, batched as the loop batches them."
    s, m, y = [], [], []
    for b in make_loader(records, cfg, CPU, 'score'):
        a, b_map = probe_outputs(b['image'], uid)
        s.append(a.numpy()); m.append(b_map.numpy().astype(np.float32)); y.append(b['label'].numpy())
    return np.concatenate(s), np.concatenate(m), np.concatenate(y)


def masks_of(records, cfg):
    return np.concatenate([b['mask'][:, 0].numpy() > 0.5 for b in make_loader(records, cfg, CPU, 'score')])


def auroc(scores, labels) -> float:
    "Mann-Whitney AUROC with tied ranks averaged (independent of clad.metrics)."
    s = np.asarray(scores, np.float64).ravel(); y = np.asarray(labels).ravel().astype(bool)
    r = rankdata(s); n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1(scores, labels, thr) -> float:
    pred = np.asarray(scores) >= thr; y = np.asarray(labels).astype(bool)
    return 2 * int((pred & y).sum()) / (int(pred.sum()) + int(y.sum()))


# --- leak-free thresholds, threshold_quantile honoured
def test_thresholds_fitted_on_validation_normals_at_the_configured_quantile(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path, sample_strategy='naive')
    q = exp.cfg.threshold_quantile
    assert q == 0.75
    for t in range(3):
        for j, task in enumerate(exp.tasks):
            vs, vm, _ = outputs(task.val, exp.cfg, 0)
            ts, tm, ty = outputs(task.test, exp.cfg, 0)
            thr = rec['thresholds'][f'{t}/{j}']
            assert thr['image'] == pytest.approx(float(np.quantile(vs, q)), abs=1e-9)
            assert thr['pixel'] == pytest.approx(float(np.quantile(vm, q)), abs=1e-9)
            # the test can tell: the test set's quantile, the default quantile and the training images' give other values
            assert abs(float(np.quantile(ts, q)) - thr['image']) > 1e-4 and abs(float(np.quantile(vs, 0.99)) - thr['image']) > 1e-4
            assert abs(float(np.quantile(tm, q)) - thr['pixel']) > 1e-4 and abs(float(np.quantile(vm, 0.99)) - thr['pixel']) > 1e-4
            assert abs(float(np.quantile(outputs(task.train, exp.cfg, 0)[0], q)) - thr['image']) > 1e-4
            assert rec['matrices']['image_f1'][t][j] == pytest.approx(f1(ts, ty, thr['image']), abs=1e-12)
            assert rec['matrices']['image_auroc'][t][j] == pytest.approx(auroc(ts, ty), abs=1e-12)


# --- best-epoch restore; early stopping and calibration on validation normals
def test_early_stopping_restores_the_best_epoch(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path / 'a', sample_strategy='naive', num_tasks=1, num_epochs=6, early_stopping=True,
                   patience=10, max_train_batches=1)
    log = rec['training'][0]
    assert log['val_loss'] == [4.0, 1.0, 0.0, 1.0, 4.0, 9.0]  # w = 1..6 after each epoch
    assert log['best_epoch'] == 2 and not log['stopped_early']
    assert float(exp.models[0].w.detach()) == 3.0  # the best epoch's weights, not the last epoch's (6)
    exp, rec = run(tiny_data, tmp_path / 'b', sample_strategy='naive', num_tasks=1, num_epochs=8, early_stopping=True,
                   patience=2, max_train_batches=1)
    log = rec['training'][0]
    assert log['stopped_early'] and len(log['train_loss']) == 5 and log['best_epoch'] == 2
    assert float(exp.models[0].w.detach()) == 3.0
    task = exp.tasks[0]
    assert {p for _, ps in exp.models[0].val_paths for p in ps} == paths(task.val)  # validation normals only
    assert exp.models[0].calibrated == [(0, [str(r.path) for r in task.val])]  # map calibration: validation normals only


# --- each strategy: what it trains on, what it keeps, which model answers
def trained(model, step) -> list[str]:
    return [p for t, ps in model.batches if t == step for p in ps]


def test_naive_trains_each_task_alone_on_one_kept_model(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path, sample_strategy='naive')
    assert len(probe.created) == 1 and len(exp.models) == 1
    m = exp.models[0]
    for t, task in enumerate(exp.tasks):
        assert sorted(trained(m, t)) == sorted(paths(task.train))  # every training image once, nothing else
    assert float(m.w.detach()) == sum(len(t.train) for t in exp.tasks)  # one model fine-tuned throughout, never re-initialised
    assert rec['cost']['additional_memory_mb_per_step'] == [0.0, 0.0, 0.0]


def test_cumulative_trains_on_everything_seen(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path, sample_strategy='cumulative', early_stopping=True, patience=5)
    m, = exp.models
    for t in range(3):
        seen = exp.tasks[:t + 1]
        assert sorted(trained(m, t)) == sorted(p for task in seen for p in paths(task.train))
        assert {p for s, ps in m.val_paths if s == t for p in ps} == set().union(*(paths(task.val) for task in seen))


def test_multi_task_trains_once_on_all_tasks(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path, sample_strategy='multi_task', early_stopping=True, patience=5)
    m, = exp.models
    assert [b[0] for b in m.batches] == [0] * sum(len(t.train) for t in exp.tasks)
    assert sorted(trained(m, 0)) == sorted(p for task in exp.tasks for p in paths(task.train))
    assert {p for _, ps in m.val_paths for p in ps} == set().union(*(paths(t.val) for t in exp.tasks))
    assert len(rec['matrices']['image_auroc']) == 1
    # joint training has seen every task: the pooled AUROC pools all three
    s, y = zip(*[(o[0], o[2]) for o in (outputs(t.test, exp.cfg, 0) for t in exp.tasks)])
    assert rec['pooled']['image_auroc'][0] == pytest.approx(auroc(np.concatenate(s), np.concatenate(y)), abs=1e-12)


def test_replay_splits_mem_size_over_seen_tasks_and_mixes_it_in(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path, sample_strategy='replay', mem_size=4)
    per_task = [{int(k): n for k, n in s['per_task'].items()} for s in rec['strategy']]
    assert per_task == [{0: 4}, {0: 2, 1: 2}, {0: 1, 1: 1, 2: 1}]  # mem_size // tasks seen, for every seen task
    run_dir = exp.run_dir
    memory = [{int(k): v for k, v in json.loads((run_dir / 'replay' / f'step{t}.json').read_text())['memory'].items()} for t in range(3)]
    for t, mem in enumerate(memory):
        assert sorted(mem) == list(range(t + 1)) and all(len(v) == 4 // (t + 1) for v in mem.values())
        for k, files in mem.items():
            assert set(files) <= paths(exp.tasks[k].train)  # original training images, never validation or test
            if k < t: assert set(files) <= set(memory[t - 1][k])  # a share shrinks; it never re-draws what it dropped
    m, = exp.models
    for t, task in enumerate(exp.tasks):
        batches = [ps for s, ps in m.batches if s == t]
        assert len(batches) == len(task.train)
        assert sorted(ps[0] for ps in batches) == sorted(paths(task.train))
        if t == 0: assert all(len(ps) == 1 for ps in batches)  # nothing to replay yet
        else:  # B = 1 new image + ceil(replay_ratio * B) = 1 image of the memory left by the previous step
            assert all(len(ps) == 2 and ps[1] in {p for v in memory[t - 1].values() for p in v} for ps in batches)
    image_bytes = 32 * 32 * 3
    assert rec['cost']['additional_memory_mb_per_step'] == [4 * image_bytes / 2**20, 4 * image_bytes / 2**20, 3 * image_bytes / 2**20]


def normalised(val_scores, scores):
    "The standard normaliser, recomputed here: (s - mean) / std of the validation normals' scores."
    v = np.asarray(val_scores, np.float64).ravel(); sd = v.std()
    return (np.asarray(scores, np.float64) - v.mean()) / (sd if sd > 0 else 1.0)


def test_single_model_one_fresh_model_per_task_and_the_tasks_own_model_answers(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path, sample_strategy='single_model')
    q = exp.cfg.threshold_quantile
    assert len(probe.created) == 3 and [m.uid for m in exp.models] == [0, 1, 2]
    for k, m in enumerate(exp.models):
        assert {t for t, _ in m.batches} == {k} and sorted(trained(m, k)) == sorted(paths(exp.tasks[k].train))
        assert float(m.w.detach()) == len(exp.tasks[k].train)  # fresh: starts from 0
    for t in range(3):
        for j, task in enumerate(exp.tasks):
            answering = min(j, t)  # the task's own model once trained; before that the newest
            vs, vm, _ = outputs(task.val, exp.cfg, answering)
            assert rec['thresholds'][f'{t}/{j}']['image'] == pytest.approx(float(np.quantile(vs, q)), abs=1e-9)
            assert rec['thresholds'][f'{t}/{j}']['pixel'] == pytest.approx(float(np.quantile(vm, q)), abs=1e-9)
    # pooled: each image gets the smallest of the seen models' scores, each normalised on its own task's validation normals
    for t in range(3):
        seen = exp.tasks[:t + 1]
        val = {k: outputs(seen[k].val, exp.cfg, k) for k in range(t + 1)}
        all_s, all_y, all_m, all_g = [], [], [], []
        for task in seen:
            z = np.stack([normalised(val[k][0], outputs(task.test, exp.cfg, k)[0]) for k in range(t + 1)])
            best = z.argmin(0)
            all_s.append(z[best, np.arange(z.shape[1])]); all_y.append(outputs(task.test, exp.cfg, 0)[2])
            maps = [normalised(val[k][1], outputs(task.test, exp.cfg, k)[1]) for k in range(t + 1)]
            all_m.append(np.stack([maps[b][i] for i, b in enumerate(best)])); all_g.append(masks_of(task.test, exp.cfg))
        assert rec['pooled']['image_auroc'][t] == pytest.approx(auroc(np.concatenate(all_s), np.concatenate(all_y)), abs=1e-9)
        assert rec['pooled']['pixel_auroc'][t] == pytest.approx(auroc(np.concatenate(all_m), np.concatenate(all_g)), abs=1e-9)


# --- pooled = seen tasks only; FWT's baseline
def test_pooled_is_over_seen_tasks_only_and_fwt_uses_the_random_baseline(tiny_data, tmp_path, probe):
    exp, rec = run(tiny_data, tmp_path, sample_strategy='naive')
    out = [outputs(t.test, exp.cfg, 0) for t in exp.tasks]
    g = [masks_of(t.test, exp.cfg) for t in exp.tasks]
    pool = lambda ts, i: np.concatenate([out[j][i] for j in ts])
    for t in range(3):
        seen = range(t + 1)
        assert rec['pooled']['image_auroc'][t] == pytest.approx(auroc(pool(seen, 0), pool(seen, 2)), abs=1e-12)
        assert rec['pooled']['pixel_auroc'][t] == pytest.approx(auroc(pool(seen, 1), np.concatenate([g[j] for j in seen])), abs=1e-12)
    assert abs(auroc(pool(range(1), 0), pool(range(1), 2)) - auroc(pool(range(3), 0), pool(range(3), 2))) > 0.05  # pooling all differs
    R = rec['matrices']
    for metric, b in (('image_auroc', 0.5), ('pixel_auroc', 0.5), ('pixel_aupro', 0.15)):
        assert rec['summary'][metric]['fwt'] == pytest.approx(((R[metric][0][1] - b) + (R[metric][1][2] - b)) / 2, abs=1e-12)
    assert rec['summary']['image_ap']['fwt'] is None and 'baseline' in rec['summary']['image_ap']['reasons']['fwt']


# --- memory budgets of the memory-bank models
def test_patchcore_cl_keeps_mem_size_cl_patches_split_over_seen_tasks(tiny_data, tmp_path):
    exp = Experiment(config(tiny_data, tmp_path, model='patchcore', sample_strategy='cl', cl=True, mem_size_cl=40,
                            layers=['layer2', 'layer3']), progress=False, log=lambda s: None)
    rec = exp.run()
    m, = exp.models
    assert m.memory_update == 'budget' and m.mem_size_cl == 40
    assert m.bank_sizes.tolist() == [13, 13, 13]  # 40 // 3 per seen task (each task has 6 * 16 patches)
    D = m.memory_bank.shape[1]; assert D == 128 + 256
    expected = [(n * D * 4 + k * 8) / 2**20 for n, k in ((40, 1), (40, 2), (39, 3))]
    assert rec['cost']['additional_memory_mb_per_step'] == pytest.approx(expected, abs=1e-12)


def test_padim_cl_keeps_exact_running_statistics_of_every_seen_task(tiny_data, tmp_path):
    exp = Experiment(config(tiny_data, tmp_path, model='padim', sample_strategy='cl', cl=True, d_reduced=16,
                            layers=['layer1', 'layer2']), progress=False, log=lambda s: None)
    rec = exp.run()
    m, = exp.models
    assert m.memory_update == 'budget' and float(m.n_seen) == sum(len(t.train) for t in exp.tasks)
    per_step = rec['cost']['additional_memory_mb_per_step']
    assert per_step[0] > 0 and per_step == [per_step[0]] * 3  # fixed memory, whatever the number of tasks
