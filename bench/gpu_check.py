"""The GPU path, checked end to end: every model and every strategy it supports on one device, then the headline run.

    .venv/bin/python bench/gpu_check.py                      # on a CUDA machine (bench/gpu_check.sh does the set-up)
    .venv/bin/python bench/gpu_check.py --device cpu --dry-run   # the same logic on the CPU, smaller (for CI-less checks)

For every model:
  1. a **unit check**: the model built and moved to the device; every parameter, buffer and tensor attribute must be
     there; a few training batches (optimiser steps, or `fit` for memory models) and a few predict batches are timed
     (images/s, with the device synchronised) and must return tensors on the device; the peak CUDA memory is read;
  2. one **short run of each strategy** the model supports through the real experiment loop (embedded dataset, 2 tasks,
     one epoch of `--batches` batches): the loop must pick the device, every tensor `predict` returns must be on it, and
     every model the run keeps must have all its tensors there afterwards.
Then the **headline experiment** — `make experiment`'s notebook and defaults (stfpm, seed 0) — runs with papermill on the
device into a temporary folder, and its results.json must name the device.

`torch.set_default_device` is left unset (and checked), so a tensor created without a device shows up on the CPU instead
of being hidden. Exit status: 0 all passed, 1 a check failed (each failure is listed), 2 no CUDA device (or bad usage).
Nothing is written outside `--out` (a temporary folder by default) except the shared embedded-dataset cache in data/.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def registered_models() -> tuple[str, ...]:
    "Every model of the registry (each module of clad/models registers one): the script keeps no list of its own."
    sys.path.insert(0, str(ROOT))
    from clad.models.base import available_models
    return tuple(available_models())


def parse_args(argv=None):
    models = registered_models()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda', help="the device to check (default cuda; 'cpu' to test this script's logic)")
    p.add_argument('--models', default=','.join(models), help='comma-separated models (default: every registered model)')
    p.add_argument('--strategies', default='', help='comma-separated strategies (default: every one each model supports)')
    p.add_argument('--batches', type=int, default=3, help='training batches per epoch (max_train_batches) and timed batches')
    p.add_argument('--img-size', type=int, default=128, help='input size of the unit checks and strategy runs')
    p.add_argument('--dry-run', action='store_true', help='a cheap pass for testing the script: 64 px, 1 batch, one strategy '
                   'per model, no headline run (unless --headline)')
    p.add_argument('--headline', action='store_true', help='run the headline experiment even with --dry-run')
    p.add_argument('--no-headline', action='store_true', help='skip the headline experiment')
    p.add_argument('--out', default='', help='working folder (default: a new temporary folder)')
    p.add_argument('--json', default='', help='also write the measurements to this JSON file')
    a = p.parse_args(argv)
    if a.dry_run:
        a.batches, a.img_size = 1, 64
    a.models = [m.strip() for m in a.models.split(',') if m.strip()]
    a.strategies = [s.strip() for s in a.strategies.split(',') if s.strip()]
    bad = sorted(set(a.models) - set(models))
    if bad: p.error(f'--models: unknown {bad}; expected some of {", ".join(models)}')
    if a.batches < 1: p.error('--batches: expected >= 1')
    return a


# --- where tensors are
def _on(device, t) -> bool:
    "`t` lives on `device` (an index-less 'cuda' matches any CUDA device)."
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def module_tensors(module):
    "(name, tensor) of every parameter, buffer and tensor attribute (also in lists, tuples and dicts) of `module`."
    import torch
    seen = set()
    def visit(name, v):
        if isinstance(v, torch.Tensor):
            if id(v) not in seen: seen.add(id(v)); yield name, v
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v): yield from visit(f'{name}[{i}]', x)
        elif isinstance(v, dict):
            for k, x in v.items(): yield from visit(f'{name}[{k!r}]', x)
    for n, t in module.named_parameters(): yield from visit(n, t)
    for n, t in module.named_buffers(): yield from visit(n, t)
    for mname, m in module.named_modules():
        for k, v in vars(m).items():
            if k.startswith('_'): continue  # torch's own bookkeeping (_parameters, _buffers, hooks)
            yield from visit(f'{mname + "." if mname else ""}{k}', v)


def misplaced(module, device) -> list[str]:
    "Names and devices of the tensors of `module` that are not on `device`."
    return [f'{n} ({t.device})' for n, t in module_tensors(module) if not _on(device, t)]


class Checks:
    "Collects failures (with the model and the step) instead of stopping at the first."
    def __init__(self): self.failures = []
    def fail(self, where, msg): self.failures.append(f'{where}: {msg}'); print(f'  FAIL {where}: {msg}', flush=True)
    def expect(self, ok, where, msg):
        if not ok: self.fail(where, msg)
        return ok


def _sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize(device)


def _peak_reset(device):
    import torch
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device):
    import torch
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == 'cuda' else None


# --- configuration of the short runs
def tiny_config(model, strategy, args, out):
    "The model's defaults on the embedded dataset, shrunk to a few batches of 2 tasks, on `args.device`."
    from clad.config import load_config
    over = dict(num_tasks=2, num_epochs=1, max_train_batches=args.batches, img_size=args.img_size, device=args.device,
                output_dir=str(out), gallery_size=0, wandb_mode='disabled', early_stopping=False, num_workers=0,
                mem_size=8, mem_size_cl=2000, overwrite=True)
    if strategy: over['sample_strategy'] = strategy
    if model == 'draem': over['anomaly_source'] = 'procedural'  # no DTD download
    if model == 'efficientad': over.update(pretrained=False, imagenet_train_path=str(out/'no-imagenet'))  # a random teacher: same device path
    return load_config(model, overrides=over)


# --- 1. the unit check of one model
def unit_check(model_name, args, out, checks) -> dict:
    import torch
    from clad.experiment import Experiment, make_loader
    from clad.models.base import build_model
    device = torch.device(args.device)
    where = f'{model_name} unit'
    cfg = tiny_config(model_name, None, args, out/'unit')
    exp = Experiment(cfg, progress=False, log=lambda *a: None)
    checks.expect(_on(device, torch.empty(0, device=exp.device)), where, f'the experiment loop chose {exp.device}, not {device}')
    task = exp.tasks[0]
    _peak_reset(device)
    model = build_model(cfg).to(device)
    bad = misplaced(model, device)
    checks.expect(not bad, where, f'after .to({device}) these tensors are elsewhere: {bad[:8]}')
    n = args.batches
    train = make_loader(task.train, cfg, device, 'train', 0, shuffle=True, batch_size=cfg.batch_size, drop_last=True)
    batches = [b for _, b in zip(range(n), train)]
    to_dev = lambda b: {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
    images = sum(len(b['image']) for b in batches)
    model.begin_task(0, train)
    _sync(device); t0 = time.perf_counter()
    if model.kind == 'trained':
        opt, _ = model.configure_optimizer()
        model.train()
        for b in batches:
            with model.autocast(): loss = model.training_step(to_dev(b))
            checks.expect(_on(device, loss), where, f'training_step returned a loss on {loss.device}')
            checks.expect(bool(torch.isfinite(loss.detach().float()).all()), where, f'training_step returned a non-finite loss {loss.item()}')
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    else:
        model.fit([to_dev(b) for b in batches])
    _sync(device); train_s = time.perf_counter() - t0
    model.end_task(0, train)
    if task.val:
        model.calibrate(make_loader(task.val, cfg, device, 'val', 0))
    bad = misplaced(model, device)
    checks.expect(not bad, where, f'after learning, these tensors are elsewhere: {bad[:8]}')
    test = [b for _, b in zip(range(n), make_loader(task.test, cfg, device, 'score', 0))]
    model.predict(to_dev(test[0])['image'])  # warm-up (kernel selection) outside the timing
    _sync(device); t0 = time.perf_counter(); n_pred = 0
    for b in test:
        p = model.predict(to_dev(b)['image']); scores, maps = p.scores, p.maps; n_pred += len(scores)
        checks.expect(_on(device, scores) and _on(device, maps), where, f'predict returned scores on {scores.device}, maps on {maps.device}')
        checks.expect(bool(torch.isfinite(scores).all() and torch.isfinite(maps).all()), where, 'predict returned non-finite values')
    _sync(device); pred_s = time.perf_counter() - t0
    return dict(model=model_name, kind=model.kind, train_images=images, train_img_per_s=round(images / train_s, 1),
                infer_images=n_pred, infer_img_per_s=round(n_pred / pred_s, 1), peak_cuda_mb=_peak_mb(device))


# --- 2. one short run of a strategy through the real loop
class PredictWatch:
    "Wraps `AnomalyModel.predict` to check where every returned tensor lives."
    def __init__(self, device):
        from clad.models.base import AnomalyModel
        self.device, self.cls, self.orig, self.calls, self.bad = device, AnomalyModel, AnomalyModel.predict, 0, []
    def __enter__(self):
        watch = self
        def predict(model, images):
            p = watch.orig(model, images); watch.calls += 1
            if not (_on(watch.device, p.scores) and _on(watch.device, p.maps)):
                watch.bad.append(f'{type(model).__name__}.predict -> scores on {p.scores.device}, maps on {p.maps.device}')
            return p
        self.cls.predict = predict
        return self
    def __exit__(self, *exc): self.cls.predict = self.orig


def strategy_run(model_name, strategy, args, out, checks) -> dict:
    import torch
    from clad.experiment import Experiment
    device = torch.device(args.device)
    where = f'{model_name}/{strategy}'
    cfg = tiny_config(model_name, strategy, args, out/'runs')
    _peak_reset(device)
    t0 = time.perf_counter()
    with PredictWatch(device) as watch:
        exp = Experiment(cfg, progress=False, log=lambda *a: None)
        checks.expect(_on(device, torch.empty(0, device=exp.device)), where, f'the experiment loop chose {exp.device}, not {device}')
        rec = exp.run()
    seconds = time.perf_counter() - t0
    checks.expect(watch.calls > 0, where, 'predict was never called')
    checks.expect(not watch.bad, where, f'{len(watch.bad)} predict calls returned tensors off {device}: {watch.bad[:3]}')
    for i, m in enumerate(exp.models):
        bad = misplaced(m, device)
        checks.expect(not bad, where, f'model {i} after the run has tensors elsewhere: {bad[:8]}')
    env_dev = rec.get('environment', {}).get('device', '')
    checks.expect(env_dev.startswith(device.type), where, f'results.json says the run used {env_dev!r}')
    auroc = rec['summary']['image_auroc']['final_avg']
    return dict(model=model_name, strategy=strategy, seconds=round(seconds, 1), predict_calls=watch.calls,
                final_image_auroc=None if auroc is None else round(auroc, 3), peak_cuda_mb=_peak_mb(device))


# --- 3. the headline experiment
def headline(args, out, checks) -> dict:
    "`make experiment` (nbs/run_experiment.ipynb with its defaults, stfpm seed 0) on the device, into `out`."
    import papermill as pm
    nb, runs = out/'stfpm_seed0.ipynb', out/'output'
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(ROOT/'nbs'/'run_experiment.ipynb'), str(nb), cwd=str(ROOT/'nbs'), progress_bar=False,
                            parameters=dict(model='stfpm', seed=0, device=args.device, output_dir=str(runs), progress='false'))
    except Exception as e:
        checks.fail('headline', f'{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ""} (notebook: {nb})')
        return dict(seconds=round(time.perf_counter() - t0, 1), notebook=str(nb))
    seconds = time.perf_counter() - t0
    found = sorted(runs.glob('stfpm/*/seed0/results.json'))
    if not checks.expect(len(found) == 1, 'headline', f'expected one results.json under {runs}, found {found}'): return dict(seconds=seconds)
    rec = json.loads(found[0].read_text())
    env_dev = rec['environment'].get('device', '')
    checks.expect(env_dev.startswith(args.device.split(':')[0]), 'headline', f'results.json says the run used {env_dev!r}')
    cost = rec.get('cost', {})
    return dict(seconds=round(seconds, 1), device=env_dev, cuda_device=rec['environment'].get('cuda_device'),
                train_seconds=cost.get('train_seconds'), inference_ms_per_image=cost.get('inference_ms_per_image'),
                peak_cuda_mb=cost.get('peak_cuda_mb'), final_image_auroc=rec['summary']['image_auroc']['final_avg'],
                results=str(found[0]))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    if torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        print(f'gpu_check: no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none on this machine. '
              f'Run it on a GPU machine, or check the script itself with --device cpu --dry-run.', file=sys.stderr)
        return 2
    if torch.get_default_device().type != 'cpu':
        print(f'gpu_check: torch.set_default_device({torch.get_default_device()}) is in effect; unset it so that misplaced '
              f'tensors show up', file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from clad.models.base import model_class
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix='clad_gpu_check_'))
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f'gpu_check on {device} ({name}), torch {torch.__version__}, working folder {out}', flush=True)
    checks, units, runs, t_all = Checks(), [], [], time.perf_counter()
    for m in args.models:
        cls = model_class(m)
        strategies = [s for s in (args.strategies or cls.supported_strategies) if s in cls.supported_strategies]
        if args.dry_run and not args.strategies: strategies = strategies[:1]
        try:
            u = unit_check(m, args, out, checks); units.append(u)
            print(f'{m:12} {u["kind"]:7} train {u["train_img_per_s"]:8.1f} img/s | inference {u["infer_img_per_s"]:8.1f} img/s | '
                  f'peak CUDA {u["peak_cuda_mb"]} MB', flush=True)
        except Exception as e:
            checks.fail(f'{m} unit', f'{type(e).__name__}: {e}'); traceback.print_exc()
        for s in strategies:
            try:
                r = strategy_run(m, s, args, out, checks); runs.append(r)
                print(f'  {m}/{s:13} {r["seconds"]:6.1f} s, {r["predict_calls"]} predict calls, final image AUROC '
                      f'{r["final_image_auroc"]}, peak CUDA {r["peak_cuda_mb"]} MB', flush=True)
            except Exception as e:
                checks.fail(f'{m}/{s}', f'{type(e).__name__}: {e}'); traceback.print_exc()
    head = None
    if not args.no_headline and (not args.dry_run or args.headline):
        head = headline(args, out, checks)
        print(f'headline (make experiment: stfpm seed 0) {json.dumps(head)}', flush=True)
    total = round(time.perf_counter() - t_all, 1)
    report = dict(device=str(device), device_name=name, torch=torch.__version__, seconds=total, units=units, runs=runs,
                  headline=head, failures=checks.failures)
    if args.json: Path(args.json).write_text(json.dumps(report, indent=1))
    if checks.failures:
        print(f'gpu_check: FAILED, {len(checks.failures)} problem(s) in {total} s:', file=sys.stderr)
        for f in checks.failures: print(f'  {f}', file=sys.stderr)
        return 1
    print(f'gpu_check: all passed on {device} in {total} s: {len(units)} models, {len(runs)} strategy runs'
          + (', headline run' if head else ''), flush=True)
    return 0


if __name__ == '__main__': sys.exit(main())
