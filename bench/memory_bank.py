"""Time CLAD's PatchCore and PaDiM against anomalib 2.7 and against the pure backbone forward, on one task of the embedded dataset.

For each model it prints (a) our fit+predict wall time, (b) anomalib's on the same images with the same backbone
weights, (c) the pure backbone forward time over the same images — the plain timm `features_only` net as anomalib runs
it, and our `FeatureExtractor` (unused stages dropped, channels-last) — fit and predict each need one forward per
image; for PatchCore also (e) the arithmetic floor: that forward plus the two distance matrix products an exact
PatchCore cannot avoid (the coreset's n×N×D and the test k-NN's Q×M×D), timed as single products; (d) image and pixel AUROC of both sides (scikit-learn on the raw scores and maps of both; anomalib's
`Engine.test` image_AUROC is wrong without a validation split, so no Engine here), and the ratios against the targets:
ours <= 0.5x anomalib, ours <= 1.25x backbone forward, |AUROC ours - anomalib| <= 0.01.

anomalib is driven through its torch models (`PatchcoreModel`, `PadimModel`) directly, not through Engine/Lightning, so
the figures time the algorithms and not the framework: PatchCore = forward in train mode per batch (collects embeddings)
+ `subsample_embedding(0.1)`, PaDiM = forward in train mode + `fit()`; prediction = forward in eval mode. A fresh model is
built for every fit (anomalib keeps an old memory bank otherwise). Their `TimmFeatureExtractor` is built with
`pre_trained=False` and then gets our backbone's state dict (strict), and the script checks that both backbones return
the same features. Images are decoded and transformed once, before any timing, and fed to both sides as the same tensors.

anomalib is a bench-only extra (`pip install .[bench]`), never imported by `clad/`. Set-up without touching .venv (a
second venv that sees .venv's packages through a .pth file and adds anomalib's own dependencies):

    python3 -m venv .venv-bench
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-bench/lib/python3.11/site-packages/clad-main-venv.pth
    .venv-bench/bin/pip install -c constraints.txt anomalib==2.7.0
    .venv-bench/bin/pip check

Run (check `cat /proc/loadavg` first: timings need an otherwise idle machine):

    .venv-bench/bin/python bench/memory_bank.py                      # both models, 100 train / 50 test images, 224 px
    .venv-bench/bin/python bench/memory_bank.py --models padim --n-train 40 --n-test 20 --repeats 1

Without anomalib installed (plain .venv) the anomalib columns are skipped.
"""
from __future__ import annotations
import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault('TQDM_DISABLE', '1')  # anomalib's coreset progress bar; tqdm reads this at import
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from clad.backbones import FeatureExtractor, layer_indices, packaged_lite0_state_dict
from clad.data import AnomalyDataset, ImageTransform, scan_category

BACKBONE = 'tf_efficientnet_lite0'
LAYERS = dict(patchcore=['layer2', 'layer3'], padim=['layer1', 'layer2', 'layer3'])
CORESET_RATIO, NUM_NEIGHBORS, D_REDUCED = 0.1, 9, 100


# ---------------------------------------------------------------- data
def dataset_root(a) -> tuple[Path, str]:
    "The embedded dataset's generator at the bench's size and counts (cached under data/), else a tiny fallback set."
    try:
        from clad.synthetic import ensure_embedded_dataset
    except ImportError:  # clad.synthetic not there yet: noise images with white squares
        from clad.data import write_tiny_mvtec
        root = Path('/tmp/clad_bench_tiny_mvtec')
        if not root.is_dir():
            write_tiny_mvtec(root, categories=('bottle',), n_train=120, n_test_good=25, n_test_defect=25, size=256)
        return root, 'FALLBACK write_tiny_mvtec (clad.synthetic not importable)', 'bottle'
    cat = a.category or 'nut'
    n_good = a.n_test * 2 // 5  # 40 % good, like the embedded dataset's default split
    root = Path(__file__).resolve().parents[1] / 'data' / f'clad_synthetic_bench_{a.size}_{cat}_{a.n_train}_{a.n_test}'
    root = ensure_embedded_dataset(root, seed=0, image_size=a.size, categories=(cat,), n_train=a.n_train,
                                   n_test_good=n_good, n_test_defect=a.n_test - n_good)
    return Path(root), f'embedded-dataset generator (clad.synthetic.ensure_embedded_dataset, {a.size} px native)', cat


def evenly(records:list, n:int) -> list:
    "`n` records spread evenly over `records` (keeps both good and defective test images in their proportion)."
    if n >= len(records): return list(records)
    return [records[i] for i in np.linspace(0, len(records) - 1, n).round().astype(int)]


def load_data(a) -> dict:
    "All train and test images decoded and transformed once, as tensors (no I/O inside any timing)."
    root, source, cat = dataset_root(a)
    sc = scan_category(root, cat)
    train, test = sc['train'][:a.n_train], evenly(sc['test'], a.n_test)
    tf = ImageTransform(a.size, normalize=True)
    def stack(recs):
        items = [AnomalyDataset(recs, tf)[i] for i in range(len(recs))]
        return (torch.stack([it['image'] for it in items]), torch.stack([it['mask'][0] for it in items]),
                np.array([it['label'] for it in items]))
    xtr, _, _ = stack(train); xte, mte, yte = stack(test)
    return dict(root=root, source=source, category=cat, xtr=xtr, xte=xte, labels=yte, masks=mte.numpy() > 0.5)


def batches(x:torch.Tensor, bs:int) -> list[torch.Tensor]: return list(torch.split(x, bs))


def loader(x:torch.Tensor, bs:int) -> list[dict]:
    "An in-memory 'loader': the batch dicts our models' `fit` iterates over (no decoding inside the timing)."
    return [dict(image=b, mask=torch.zeros(b.shape[0], 1, *b.shape[-2:]), label=torch.zeros(b.shape[0], dtype=torch.long),
                 task=torch.zeros(b.shape[0], dtype=torch.long)) for b in batches(x, bs)]


# ---------------------------------------------------------------- metrics
def aurocs(scores:np.ndarray, maps:np.ndarray, labels:np.ndarray, masks:np.ndarray) -> tuple[float, float|None]:
    from sklearn.metrics import roc_auc_score
    img = float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float('nan')
    pix = float(roc_auc_score(masks.ravel(), maps.ravel())) if masks.any() and not masks.all() else None
    return img, pix


# ---------------------------------------------------------------- the three contenders
def backbone_forward(fe:FeatureExtractor, d:dict, bs:int) -> dict:
    "Seconds for one no-grad forward of every train and test image: the floor of fit+predict."
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for b in batches(d['xtr'], bs) + batches(d['xte'], bs): fe(b)
    return dict(total=time.perf_counter() - t, cpu=time.process_time() - c)


def plain_timm(model:str) -> torch.nn.Module:
    "The whole timm `features_only` net with the packaged weights, NCHW: the backbone as anomalib runs it."
    import timm
    net = timm.create_model(BACKBONE, pretrained=False, features_only=True, out_indices=tuple(layer_indices(LAYERS[model]))).eval()
    full = packaged_lite0_state_dict()
    net.load_state_dict({k: full[k] for k in net.state_dict()})
    for p in net.parameters(): p.requires_grad_(False)
    return net


def gemm_floor(n_bank:int, n_train:int, n_query:int, dim:int, reps:int=3) -> float:
    "Best seconds of the two products an exact PatchCore must compute: coreset [n,D]x[D,N] and k-NN [Q,D]x[D,M]."
    g = torch.Generator().manual_seed(0)
    C, X, Q = (torch.randn(k, dim, generator=g) for k in (n_bank, n_train, n_query))
    C @ X.T
    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter(); C @ X.T; Q @ C.T; best = min(best, time.perf_counter() - t)
    return best


def build_ours(model:str, a):
    if model == 'patchcore':
        from clad.models.patchcore import PatchcoreModel
        return PatchcoreModel(backbone=BACKBONE, layers=LAYERS['patchcore'], pretrained=True, f_coreset=CORESET_RATIO,
                              num_neighbors=NUM_NEIGHBORS, seed=a.seed)
    from clad.models.padim import PadimModel
    return PadimModel(backbone=BACKBONE, layers=LAYERS['padim'], pretrained=True, d_reduced=D_REDUCED, seed=a.seed)


def run_ours(model:str, d:dict, a) -> dict:
    torch.manual_seed(a.seed)
    m = build_ours(model, a)
    c0 = time.process_time(); t0 = time.perf_counter()
    m.fit(loader(d['xtr'], a.batch_size))
    t1 = time.perf_counter()
    out = [m.predict(b) for b in batches(d['xte'], a.batch_size)]
    t2 = time.perf_counter(); c2 = time.process_time()
    scores = torch.cat([o.scores for o in out]).numpy(); maps = torch.cat([o.maps for o in out]).numpy()
    return dict(fit=t1 - t0, predict=t2 - t1, total=t2 - t0, cpu=c2 - c0, scores=scores, maps=maps, model=m)


def build_anomalib(model:str, a, ours=None):
    "A fresh anomalib torch model with our backbone weights (their layer names for lite0 are timm out_indices)."
    idx = [int(l[5:]) for l in LAYERS[model]]  # anomalib maps 'layerK' by module name, which lite0 lacks
    torch.manual_seed(a.seed)
    if model == 'patchcore':
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
        m = PatchcoreModel(layers=idx, backbone=BACKBONE, pre_trained=False, num_neighbors=NUM_NEIGHBORS)
    else:
        from anomalib.models.image.padim.torch_model import PadimModel
        m = PadimModel(backbone=BACKBONE, layers=idx, pre_trained=False, n_features=D_REDUCED)
        sel = getattr(getattr(ours, 'embedding', None), 'channel_idx', None)
        if sel is not None: m.idx.copy_(sel.to(m.idx))  # the same random channel subset on both sides
        m.same_channels = sel is not None
    full = packaged_lite0_state_dict()  # strict: every tensor of their (whole) net
    m.feature_extractor.feature_extractor.load_state_dict({k: full[k] for k in m.feature_extractor.feature_extractor.state_dict()})
    return m


def run_anomalib(model:str, d:dict, a, ours=None) -> dict:
    m = build_anomalib(model, a, ours)
    torch.manual_seed(a.seed)  # KCenterGreedy draws its start point from the global generator
    c0 = time.process_time(); t0 = time.perf_counter()
    m.train()
    with torch.no_grad():
        for b in batches(d['xtr'], a.batch_size): m(b)
        if model == 'patchcore': m.subsample_embedding(CORESET_RATIO)
        else: m.fit()
    t1 = time.perf_counter()
    m.eval()
    with torch.no_grad(): out = [m(b) for b in batches(d['xte'], a.batch_size)]
    t2 = time.perf_counter(); c2 = time.process_time()
    scores = torch.cat([o.pred_score.reshape(-1) for o in out]).numpy()
    maps = torch.cat([o.anomaly_map.reshape(o.anomaly_map.shape[0], *o.anomaly_map.shape[-2:]) for o in out]).numpy()
    return dict(fit=t1 - t0, predict=t2 - t1, total=t2 - t0, cpu=c2 - c0, scores=scores, maps=maps, model=m)


def same_features(model:str, d:dict) -> float:
    "Max |difference| between our backbone's and anomalib's features on two images (0 = same weights, same net)."
    class A: seed = 0
    theirs = build_anomalib(model, A()).feature_extractor.eval()
    ours = FeatureExtractor(BACKBONE, LAYERS[model], pretrained=True)
    x = d['xte'][:2]
    with torch.no_grad(): fo, ft = ours(x), list(theirs(x).values())
    return max(float((o - t).abs().max()) for o, t in zip(fo, ft))


# ---------------------------------------------------------------- main
def best(runs:list[dict]) -> dict: return min(runs, key=lambda x: x['total'])


def fmt_t(runs:list[dict]) -> str:
    "Best wall time over the runs (median, n) and that run's process CPU time (all threads)."
    ts = [x['total'] for x in runs]
    return (f"{min(ts):7.2f} s wall, {best(runs)['cpu']:7.2f} s CPU" +
            (f" (wall median {float(np.median(ts)):.2f}, n={len(ts)})" if len(ts) > 1 else ''))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n-train', type=int, default=100); ap.add_argument('--n-test', type=int, default=50)
    ap.add_argument('--size', type=int, default=224); ap.add_argument('--category', default='')
    ap.add_argument('--models', nargs='+', default=['patchcore', 'padim'], choices=['patchcore', 'padim'])
    ap.add_argument('--repeats', type=int, default=3, help='timed runs of ours and of the backbone (best is reported)')
    ap.add_argument('--anomalib-repeats', type=int, default=1, help="timed runs of anomalib (its PatchCore takes minutes)")
    ap.add_argument('--no-anomalib', action='store_true'); ap.add_argument('--no-ours', action='store_true')
    ap.add_argument('--batch-size', type=int, default=32); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they come, also when redirected to a file
    torch.set_num_threads(a.threads)
    warnings.filterwarnings('ignore')
    try:
        import anomalib; have_anomalib = not a.no_anomalib
    except ImportError:
        have_anomalib = False; print("anomalib not importable: its columns are skipped (see the docstring for the bench venv)")

    d = load_data(a)
    print(f"data: {d['source']}, {d['root']}, category {d['category']!r}: {len(d['xtr'])} train, {len(d['xte'])} test "
          f"({int(d['labels'].sum())} defective), {a.size} px; backbone {BACKBONE} "
          f"({FeatureExtractor(BACKBONE, ['layer2'], pretrained=True).weights_info['weights']}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {a.batch_size}" + (f"; anomalib {anomalib.__version__} (torch models, no Engine)" if have_anomalib else ''))
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}")
    rows = {}
    for model in a.models:
        fe = plain_timm(model)
        ft = FeatureExtractor(BACKBONE, LAYERS[model], pretrained=True)
        with torch.no_grad(): fe(d['xtr'][:a.batch_size]); ft(d['xtr'][:a.batch_size])  # warm-up (allocator, oneDNN kernels)
        r = dict(backbone=[backbone_forward(fe, d, a.batch_size) for _ in range(a.repeats)],
                 floor=[backbone_forward(ft, d, a.batch_size) for _ in range(a.repeats)])
        if not a.no_ours:
            runs = [run_ours(model, d, a) for _ in range(a.repeats)]
            r['ours'] = runs; r['ours_auc'] = aurocs(runs[-1]['scores'], runs[-1]['maps'], d['labels'], d['masks'])
            m = runs[-1]['model']
            if model == 'patchcore':
                h, w = m.embed(d['xte'][:1]).shape[-2:]
                r['gemm'] = gemm_floor(len(m.memory_bank), m.fit_seconds['patches'], len(d['xte']) * h * w, m.memory_bank.shape[1])
        if have_anomalib:
            diff = same_features(model, d)
            ours_m = r['ours'][-1]['model'] if 'ours' in r else None
            runs = [run_anomalib(model, d, a, ours_m) for _ in range(a.anomalib_repeats)]
            r['anom'] = runs; r['anom_auc'] = aurocs(runs[-1]['scores'], runs[-1]['maps'], d['labels'], d['masks'])
            r['feat_diff'] = diff
        rows[model] = r
        report(model, r, a)
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


def report(model:str, r:dict, a):
    bb, fl = best(r['backbone']), best(r['floor'])
    print(f"\n== {model} (layers {'+'.join(LAYERS[model])}" + (f", coreset {CORESET_RATIO}, k={NUM_NEIGHBORS}" if model == 'patchcore' else f", d={D_REDUCED}") + ")")
    print(f"  (c) backbone forward, train+test images : {fmt_t(r['backbone'])}  (whole timm features_only net, NCHW, as anomalib runs it)")
    print(f"      same with our FeatureExtractor         : {fmt_t(r['floor'])}  (unused stages dropped, BatchNorm folded, channels-last, CPU micro-batches)")
    if 'gemm' in r:
        print(f"  (e) exact distance products (coreset n x N x D + k-NN Q x M x D, one sgemm each): {r['gemm']:.2f} s; "
              f"arithmetic floor = our extractor + products = {fl['total'] + r['gemm']:.2f} s")
    if 'ours' in r:
        o = r['ours']
        print(f"  (a) ours fit+predict                    : {fmt_t(o)}  [fit {best(o)['fit']:.2f} s, predict {best(o)['predict']:.2f} s wall]")
    if 'anom' in r:
        n = r['anom']
        print(f"  (b) anomalib 2.7 fit+predict            : {fmt_t(n)}  [fit {best(n)['fit']:.2f} s, predict {best(n)['predict']:.2f} s wall]"
              f"  (backbone features identical to ours: max |diff| {r['feat_diff']:.1e}"
              + ("; PaDiM channel subset copied from ours" if getattr(n[-1]['model'], 'same_channels', False) else '') + ")")
    fa = lambda v: 'n/a' if v is None else f"{v:.4f}"
    if 'ours' in r: print(f"  (d) AUROC ours     image {fa(r['ours_auc'][0])}  pixel {fa(r['ours_auc'][1])}")
    if 'anom' in r: print(f"  (d) AUROC anomalib image {fa(r['anom_auc'][0])}  pixel {fa(r['anom_auc'][1])}")
    if 'ours' in r:
        o = best(r['ours']); to = o['total']
        ok = lambda c: 'MET' if c else 'NOT MET'
        print(f"  ours / backbone forward = {to / bb['total']:.2f}x wall, {o['cpu'] / bb['cpu']:.2f}x CPU  (target <= 1.25x: {ok(to / bb['total'] <= 1.25)}); "
              f"ours / our extractor's forward = {to / fl['total']:.2f}x wall, {o['cpu'] / fl['cpu']:.2f}x CPU ({ok(to / fl['total'] <= 1.25)})")
        if 'gemm' in r:
            af = fl['total'] + r['gemm']
            print(f"  ours / arithmetic floor (e) = {to / af:.2f}x wall ({ok(to / af <= 1.25)}); the products alone are {r['gemm'] / bb['total']:.2f}x "
                  f"the backbone forward as anomalib runs it and {r['gemm'] / fl['total']:.2f}x our extractor's")
        if 'anom' in r:
            n = best(r['anom']); tn = n['total']
            print(f"  ours / anomalib         = {to / tn:.3f}x wall, {o['cpu'] / n['cpu']:.3f}x CPU  (target <= 0.5x: {ok(to / tn <= 0.5)}); anomalib is {tn / to:.1f}x slower")
            for k, name in ((0, 'image'), (1, 'pixel')):
                u, v = r['ours_auc'][k], r['anom_auc'][k]
                if u is not None and v is not None:
                    print(f"  {name} AUROC ours - anomalib = {u - v:+.4f}  (target |diff| <= 0.01: {ok(abs(u - v) <= 0.01)})")
            so, sn = r['ours'][-1]['scores'], r['anom'][-1]['scores']
            print(f"  image-score correlation ours vs anomalib: Pearson {np.corrcoef(so, sn)[0, 1]:.4f}")


if __name__ == '__main__':
    main()
