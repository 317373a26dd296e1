"""Time the evaluation of one test task: 100 images of 256x256, all eight metrics incl. AU-PRO (target: < 2 s on 2 CPU cores).

Usage: python bench/evaluate.py [--images 100] [--size 256] [--repeats 3]
"""
from __future__ import annotations
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from clad.metrics import evaluate_task, fit_threshold


def make_task(n:int, size:int, seed:int=0):
    "Random smooth maps; half the images get a few blob defects that raise the map inside them."
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64); labels[n // 2:] = 1
    masks = np.zeros((n, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2); r = rng.integers(2, size // 10)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    noise = ndimage.uniform_filter(rng.random((n, size, size), dtype=np.float32), size=(1, 5, 5))
    maps = (noise + 0.15 * masks).astype(np.float32)
    scores = maps.reshape(n, -1).max(1)
    val_scores = ndimage.uniform_filter(rng.random((20, size, size), dtype=np.float32), size=(1, 5, 5)).reshape(20, -1).max(1)
    return scores, maps, labels, masks, fit_threshold(val_scores, 0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--images', type=int, default=100); ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    scores, maps, labels, masks, thr = make_task(a.images, a.size)
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter(); vals, why = evaluate_task(scores, maps, labels, masks, image_threshold=thr); times.append(time.perf_counter() - t)
    print(f"evaluate_task: {a.images} images of {a.size}x{a.size} ({maps.size / 1e6:.2f} M pixels), all metrics incl. AU-PRO")
    print('  ' + ', '.join(f"{k}={v:.4f}" if v is not None else f"{k}=null" for k, v in vals.items()))
    print(f"  seconds: best {min(times):.3f}, median {float(np.median(times)):.3f} over {a.repeats} runs (target < 2 s on 2 CPU cores)")


if __name__ == '__main__':
    main()
