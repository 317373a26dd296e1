"""Channels-last (NHWC) against contiguous (NCHW) for EfficientAD's three networks on this CPU.

EfficientAD keeps its teacher, student and autoencoder channels-last. Whether that is faster on CPU depends on the
instruction set oneDNN finds (it helped on an AVX-512 Xeon and cost on an AVX2-only EPYC), so this script measures it on
the machine at hand: one training-shaped pass — teacher forward under no_grad and student forward on `--batch` images,
autoencoder forward on half of them, backward through student and autoencoder — in each layout, the layouts taking
turns, best of `--repeats` after one untimed pass. The networks are randomly initialised (layout does not depend on the
weights). Prints the seconds per pass and the ratio channels-last / contiguous (above 1: channels-last is slower).

    .venv/bin/python bench/memory_layout.py --threads 2
"""
import argparse, os, platform, time

import torch

from clad.models.efficientad import EfficientADModel

LAYOUTS = {'contiguous': torch.contiguous_format, 'channels-last': torch.channels_last}


def cpu_name() -> str:
    "The CPU's model name (Linux), else what `platform` knows."
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def one_pass(model, x:torch.Tensor) -> float:
    "Seconds for one training-shaped forward/backward of the three networks on `x`."
    t0 = time.perf_counter()
    with torch.no_grad(): t = model.teacher(x)
    s, ae = model.student(x), model.ae(x[:max(1, len(x) // 2)])
    loss = (t - s[:, :t.shape[1]]).pow(2).mean() + (s[:len(ae), t.shape[1]:] - ae).pow(2).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', type=int, default=256, help='image side')
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--repeats', type=int, default=2, help='timed passes per layout (the best is reported)')
    ap.add_argument('--threads', type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = EfficientADModel(model_size='small', teacher_weights='', pretrained=False)
    x = torch.randn(a.batch, 3, a.size, a.size)
    print(f"{cpu_name()}; torch {torch.__version__}, {a.threads} threads, "
          f"oneDNN ISA cap {os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}; {a.batch} images of {a.size} px, "
          f"best of {a.repeats}")
    best = {name: float('inf') for name in LAYOUTS}
    for r in range(a.repeats + 1):
        for name, fmt in LAYOUTS.items():
            model.to(memory_format=fmt)
            dt = one_pass(model, x.contiguous(memory_format=fmt))
            if r: best[name] = min(best[name], dt)
    for name in LAYOUTS: print(f"{name:14s} {best[name]:7.2f} s per pass")
    print(f"channels-last / contiguous: {best['channels-last'] / best['contiguous']:.2f}"
          f" ({'channels-last slower' if best['channels-last'] > best['contiguous'] else 'channels-last faster'} here)")


if __name__ == '__main__': main()
