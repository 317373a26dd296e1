"""Record (or check) the result matrices of every existing strategy on a fixed seed and tiny data.

    python tools/strategy_golden.py --write   # record tests/data/strategy_golden.json (done once, before a redesign)
    python tools/strategy_golden.py           # compare the current code with the recorded values

`tests/test_strategy_golden.py` runs the comparison: a redesign of the strategy API must leave every number unchanged.

The recording runs in a child process whose CPU kernels are pinned (`PINNED_KERNELS`): oneDNN, ATen and MKL otherwise pick
their kernels by the processor (AVX-512 and AMX here, AVX2 on another machine), the sums of a convolution come out in a
different order, and a model trained for a few steps ends a few thousandths apart. Pinned to AVX2 and one thread, the
numbers are the same on every x86-64 machine with AVX2.
"""
from __future__ import annotations
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1]/'tests'/'data'/'strategy_golden.json'
TINY = dict(img_size=32, backbone='resnet18', pretrained=False, num_epochs=2, batch_size=4, mem_size=6, gallery_size=0,
            device='cpu', patience=5, seed=3, num_tasks=3, eval_batch_size=8)
# (model, strategy, extra overrides): every strategy of today on the models whose behaviour it changes
CASES = [('stfpm', s, {}) for s in ('naive', 'replay', 'multi_task', 'single_model', 'cumulative')] + [
    ('cfa', 'replay', {}), ('cfa', 'naive', {}),
    ('patchcore', 'cl', dict(cl=True, mem_size_cl=200)), ('patchcore', 'cl', dict(cl=False)), ('patchcore', 'naive', {}),
    ('patchcore', 'single_model', {}),
    ('padim', 'cl', dict(cl=True)), ('padim', 'cl', dict(cl=False)), ('padim', 'naive', {})]


def case_name(model, strategy, extra) -> str:
    return '/'.join([model, strategy] + [f'{k}={v}' for k, v in sorted(extra.items())])


def run_case(data_root, out, model, strategy, extra) -> dict:
    from clad.config import load_config
    from clad.experiment import Experiment
    cfg = load_config(model, overrides=dict(TINY, sample_strategy=strategy, data_path=str(data_root), output_dir=str(out), **extra))
    res = Experiment(cfg, progress=False, log=lambda *_: None).run()
    return dict(matrices=res['matrices'], pooled=res['pooled'], routing_accuracy=res.get('routing_accuracy', {}),
                additional_memory_mb_per_step=res['cost']['additional_memory_mb_per_step'])


# read by the libraries when they start, so they must be in the environment of a fresh process
PINNED_KERNELS = dict(ONEDNN_MAX_CPU_ISA='AVX2', ATEN_CPU_CAPABILITY='avx2', MKL_CBWR='COMPATIBLE', OMP_NUM_THREADS='1',
                      MKL_NUM_THREADS='1')


def record() -> dict:
    "Every case's results, computed in a child process with the CPU kernels pinned."
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)/'golden.json'
        subprocess.run([sys.executable, __file__, '--record-into', str(out)], check=True,
                       env={**os.environ, **PINNED_KERNELS}, cwd=Path(__file__).resolve().parents[1])
        return json.loads(out.read_text())


def record_here() -> dict:
    "Every case's results, computed in this process (as pinned as its environment is)."
    import torch
    from clad.data import write_tiny_mvtec
    torch.set_num_threads(1)  # the sums of a convolution depend on the thread count; one thread is the same on every machine
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)/'data'
        write_tiny_mvtec(data, categories=['bottle', 'cable', 'carpet'], n_train=8, n_test_good=3, n_test_defect=3, size=32)
        return {case_name(*c): run_case(data, Path(tmp)/case_name(*c).replace('/', '_'), *c) for c in CASES}


def differences(a, b, where='', tol=1e-6) -> list[str]:
    "Paths at which two JSON values differ (numbers beyond `tol`)."
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f'{where}/{k}: only in one' for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b)): out += differences(a[k], b[k], f'{where}/{k}', tol)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b): return [f'{where}: length {len(a)} vs {len(b)}']
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f'{where}[{i}]', tol)]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b): return []
        return [] if abs(a - b) <= tol else [f'{where}: {a} vs {b}']
    return [] if a == b else [f'{where}: {a!r} vs {b!r}']


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--write', action='store_true', help='record the golden values instead of checking them')
    p.add_argument('--record-into', type=Path, help=argparse.SUPPRESS)  # the child process of record()
    args = p.parse_args()
    if args.record_into:
        missing = {k: v for k, v in PINNED_KERNELS.items() if os.environ.get(k) != v}
        if missing: sys.exit(f'--record-into needs the pinned kernels in the environment: {missing}')
        args.record_into.write_text(json.dumps(record_here()))
        sys.exit(0)
    got = record()
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + '\n')
        print(f'wrote {GOLDEN} ({len(got)} runs)')
        sys.exit(0)
    diff = differences(json.loads(GOLDEN.read_text()), json.loads(json.dumps(got)))
    print('\n'.join(diff) if diff else f'all {len(got)} runs equal the recorded values')
    sys.exit(1 if diff else 0)
