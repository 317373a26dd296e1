"Per-task metrics of clad.metrics against plain reference implementations written from the definitions."
import numpy as np
import pytest
from skimage.measure import label as sk_label
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from clad.core import CladError
from clad.metrics import (METRICS, ScoreNormalizer, aupro, average_precision, evaluate_task, f1_at_threshold, f1_max,
                          fit_threshold, pooled_metrics, region_weights, roc_auc)


# ---- references, straight from the definitions ----
def ref_f1_max(s, y):
    p, r, _ = precision_recall_curve(y, s)
    f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)
    return f.max()


def ref_trapezoid(x, y, x_max):
    "MVTec AD's trapezoid with linear interpolation at x_max (x sorted)."
    x, y = np.asarray(x, float), np.asarray(y, float)
    corr = 0.0
    if x_max not in x:
        ins = np.searchsorted(x, x_max)
        y_i = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        corr = 0.5 * (y_i + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + corr)


def ref_aupro(maps, masks, max_fpr=0.3):
    "Loop over every distinct threshold and every region (skimage labelling, 8-connectivity, per image)."
    masks = masks.astype(bool)
    regions = []
    for i in range(len(masks)):
        lab = sk_label(masks[i], connectivity=2)
        for k in range(1, lab.max() + 1): regions.append((i, lab == k))
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for thr in np.unique(maps)[::-1]:
        pred = maps >= thr
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions]))
    return ref_trapezoid(fprs, pros, max_fpr) / max_fpr


def random_case(rng, n=6, h=12, w=12, ties=True, p_defect_img=0.5):
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        if rng.random() < p_defect_img:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h), rng.integers(0, w)
                masks[i, y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = True
    maps = rng.random((n, h, w)) + 0.5 * masks * rng.random((n, h, w))
    if ties: maps = np.round(maps, 1)
    return maps, masks


# ---- image-level and flat metrics vs scikit-learn ----
@pytest.mark.parametrize('seed', range(8))
def test_auroc_ap_f1_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[0], y[1] = True, False
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if seed % 2: s = np.round(s, 1)  # many ties
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    f, thr = f1_max(s, y)
    assert f == pytest.approx(ref_f1_max(s, y), abs=1e-12)
    assert f1_at_threshold(s, y, thr) == pytest.approx(f, abs=1e-12)  # the reported threshold reaches it
    t = np.quantile(s, 0.7)
    assert f1_at_threshold(s, y, t) == pytest.approx(f1_score(y, s >= t), abs=1e-12)


def test_undefined_flat_metrics_are_none():
    s = np.array([0.3, 0.2, 0.9])
    assert roc_auc(s, np.zeros(3)) is None and average_precision(s, np.zeros(3)) is None and f1_max(s, np.zeros(3)) == (None, None)
    assert roc_auc(s, np.ones(3)) is None
    assert average_precision(s, np.ones(3)) == pytest.approx(1.0)


# ---- AU-PRO vs the per-region loop ----
@pytest.mark.parametrize('seed', range(10))
def test_aupro_matches_reference_loop(seed):
    rng = np.random.default_rng(100 + seed)
    maps, masks = random_case(rng, ties=seed % 2 == 0)
    if not masks.any(): masks[0, 0, 0] = True
    assert aupro(maps, masks) == pytest.approx(ref_aupro(maps, masks), abs=1e-10)
    assert aupro(maps, masks, 0.05) == pytest.approx(ref_aupro(maps, masks, 0.05), abs=1e-10)


def test_aupro_one_pixel_defects_and_connectivity():
    m = np.zeros((2, 6, 6), bool)
    m[0, 0, 0] = m[0, 1, 1] = True      # diagonal: one region (8-connectivity)
    m[1, 5, 5] = True                   # one-pixel defect
    m[0, 4, 0] = True                   # another one-pixel region
    assert region_weights(m)[1] == 3
    rng = np.random.default_rng(0)
    maps = rng.random(m.shape)
    assert aupro(maps, m) == pytest.approx(ref_aupro(maps, m), abs=1e-12)
    assert aupro(m + 0.0, m) == pytest.approx(1.0)


def test_aupro_regions_do_not_cross_images():
    m = np.zeros((2, 4, 4), bool); m[:, 1, 1] = True   # same pixel in two images = two regions
    assert region_weights(m)[1] == 2


def test_aupro_random_scorer_is_about_0_15():
    rng = np.random.default_rng(1)
    m = np.zeros((20, 64, 64), bool); m[:, 10:30, 10:30] = True
    assert aupro(rng.random(m.shape), m) == pytest.approx(0.15, abs=0.01)


# ---- evaluate_task ----
def test_evaluate_task_matches_references():
    rng = np.random.default_rng(5)
    maps, masks = random_case(rng, n=10, h=16, w=16, ties=False, p_defect_img=0.6)
    labels = masks.reshape(10, -1).any(1).astype(int)
    labels[0], labels[1], masks[1, 3, 3] = 0, 1, True
    scores = maps.reshape(10, -1).max(1)
    vals, why = evaluate_task(scores, maps, labels, masks, image_threshold=float(np.median(scores)))
    assert set(METRICS) <= set(vals) and why == {}
    assert vals['image_auroc'] == pytest.approx(roc_auc_score(labels, scores))
    assert vals['image_ap'] == pytest.approx(average_precision_score(labels, scores))
    assert vals['image_f1'] == pytest.approx(f1_score(labels, scores >= np.median(scores)))
    assert vals['pixel_auroc'] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert vals['pixel_ap'] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert vals['pixel_f1_max'] == pytest.approx(ref_f1_max(maps.ravel(), masks.ravel()))
    assert vals['pixel_aupro'] == pytest.approx(ref_aupro(maps, masks))


def test_evaluate_task_accepts_torch_and_channel_masks():
    import torch
    rng = np.random.default_rng(6)
    maps, masks = random_case(rng, n=4, h=8, w=8)
    masks[0, 0, 0] = True
    labels = masks.reshape(4, -1).any(1).astype(int); labels[-1] = 0; masks[-1] = False
    a, _ = evaluate_task(maps.reshape(4, -1).max(1), maps, labels, masks)
    b, _ = evaluate_task(torch.tensor(maps.reshape(4, -1).max(1)), torch.tensor(maps)[:, None],
                         torch.tensor(labels), torch.tensor(masks, dtype=torch.float32)[:, None])
    assert a == b


def test_all_normal_all_defect_no_masks_no_maps():
    rng = np.random.default_rng(7)
    maps = rng.random((4, 8, 8)); s = maps.reshape(4, -1).max(1)
    vals, why = evaluate_task(s, maps, np.zeros(4), np.zeros((4, 8, 8)), image_threshold=0.5)
    assert all(vals[m] is None for m in METRICS)
    assert why['image_auroc'] == why['image_f1'] == 'test set has no defect images'
    assert why['pixel_aupro'] == 'test set has no defect pixels'
    m = np.zeros((4, 8, 8)); m[:, 2:4, 2:4] = 1
    vals, why = evaluate_task(s, maps, np.ones(4), m, image_threshold=0.5)
    assert vals['image_auroc'] is None and why['image_auroc'] == 'test set has no normal images'
    assert vals['image_ap'] == pytest.approx(1.0) and vals['image_f1'] is not None and vals['pixel_auroc'] is not None
    vals, why = evaluate_task(s, maps, np.r_[0, 0, 1, 1], None)
    assert all(vals[m] is None and why[m] == 'dataset has no masks' for m in ('pixel_auroc', 'pixel_ap', 'pixel_f1_max', 'pixel_aupro'))
    assert why['image_f1'].startswith('no validation threshold') and vals['image_auroc'] is not None
    vals, why = evaluate_task(s, None, np.r_[0, 0, 1, 1], m)
    assert why['pixel_auroc'] == 'model gives no anomaly maps'
    vals, why = evaluate_task(np.zeros(0), np.zeros((0, 8, 8)), np.zeros(0), np.zeros((0, 8, 8)))
    assert all(vals[k] is None for k in METRICS) and why['image_auroc'] == 'empty test set'
    full = np.ones((4, 8, 8))
    vals, why = evaluate_task(s, maps, np.ones(4), full)
    assert vals['pixel_auroc'] is None and vals['pixel_aupro'] is None and why['pixel_aupro'] == 'test set has no normal pixels'


def test_non_finite_scores_give_reasons_not_numbers():
    s = np.array([0.1, np.nan, 0.3, 0.4]); maps = np.zeros((4, 4, 4)); maps[1, 0, 0] = np.inf
    m = np.zeros((4, 4, 4)); m[2, 1, 1] = 1
    vals, why = evaluate_task(s, maps, np.r_[0, 0, 1, 1], m)
    assert all(vals[k] is None for k in METRICS) and 'non-finite' in why['image_auroc'] and 'non-finite' in why['pixel_auroc']


def test_bad_shapes_raise():
    with pytest.raises(CladError, match='maps and masks'):
        evaluate_task(np.zeros(2), np.zeros((2, 4, 4)), np.r_[0, 1], np.zeros((2, 4, 5)))
    with pytest.raises(CladError, match='labels'):
        evaluate_task(np.zeros(3), None, np.r_[0, 1], None)


def test_pixel_threshold_gives_extra_pixel_f1():
    rng = np.random.default_rng(8)
    maps, masks = random_case(rng, n=6, h=8, w=8); masks[0, 0, 0] = True
    vals, _ = evaluate_task(maps.reshape(6, -1).max(1), maps, np.r_[0, 0, 1, 1, 1, 1], masks, pixel_threshold=0.7)
    assert vals['pixel_f1'] == pytest.approx(f1_score(masks.ravel(), maps.ravel() >= 0.7))


# ---- thresholds, normalisation, pooling ----
def test_fit_threshold_and_normalizer():
    v = np.arange(101.0)
    assert fit_threshold(v, 0.99) == pytest.approx(99.0)
    assert fit_threshold([np.nan, 1.0]) is None
    n = ScoreNormalizer('robust').fit(v, v.reshape(1, 101, 1))
    assert n.image_loc == 50 and n.image_scale == pytest.approx(49.0) and n.pixel_scale == pytest.approx(49.0)
    with pytest.raises(CladError, match='normalization'): ScoreNormalizer('minmax').fit(v)


def test_pooled_matches_concatenated_sklearn():
    rng = np.random.default_rng(9)
    cases = [random_case(rng, n=5, h=8, w=8) for _ in range(3)]
    for _, m in cases: m[0, 0, 0] = True
    scores = [mp.reshape(5, -1).max(1) + j for j, (mp, _) in enumerate(cases)]
    labels = [m.reshape(5, -1).any(1).astype(int) for _, m in cases]
    for l in labels: l[-1] = 0
    vals, why = pooled_metrics(scores, [mp for mp, _ in cases], labels, [m for _, m in cases])
    assert vals['image_auroc'] == pytest.approx(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
    assert vals['pixel_auroc'] == pytest.approx(roc_auc_score(np.concatenate([m.ravel() for _, m in cases]),
                                                              np.concatenate([mp.ravel() for mp, _ in cases])))
    vals, why = pooled_metrics(scores, None, labels, None)
    assert vals['pixel_auroc'] is None and why['pixel_auroc'] == 'dataset has no masks'
