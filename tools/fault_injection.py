"""Plant known bugs, one at a time, in a scratch copy of the repository and check that the tests named for each catch it.

Each bug is a text substitution in one module of `clad/` — applied to the module *and* to the notebook it is exported
from (notebook tests run the notebook's own definitions, pytest runs the module) — plus the tests that must fail when
it is planted: pytest node ids (`tests/...`) and notebooks (`nbs/...`, run with `nbdev_test`). A bug whose text is
missing (or not unique) in the module or its notebook is reported `pattern not found`, never silently passed: the code
moved on, update the substitution (a bug may list alternative texts, `alt`, while a line is being rewritten).

    .venv/bin/python tools/fault_injection.py                  # every bug (slow: about 30 bugs x their tests)
    .venv/bin/python tools/fault_injection.py --check          # only check that every pattern is still found
    .venv/bin/python tools/fault_injection.py -k replay -k fwt # bugs whose name contains one of these
    .venv/bin/python tools/fault_injection.py --list           # the bugs and their tests

The copy goes to a temporary folder (or `--copy DIR`) and is deleted afterwards unless `--keep`. Tests run there with
`PYTHONPATH` and `CLAD_ROOT` pointing at the copy and one OpenMP thread. Before planting anything, the named tests run
once on the unmodified copy: a test that fails there cannot prove anything and is reported. The exit status is 1 when
a bug is missed or a pattern is not found.
"""
from __future__ import annotations
import argparse
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMISES = 'tests/test_promises.py'


@dataclass
class Bug:
    name: str  # short id
    what: str  # the broken promise
    module: str  # path of the module under clad/
    old: str  # exact text (must occur once in the module and once in its notebook)
    new: str  # its replacement
    tests: list = field(default_factory=list)  # pytest node ids and notebooks that must fail
    alt: list = field(default_factory=list)  # further (old, new) pairs, tried in order when `old` is not found (code in flux)


def t(name): return f'{PROMISES}::{name}'

THRESHOLDS = t('test_thresholds_fitted_on_validation_normals_at_the_configured_quantile')
EARLY = t('test_early_stopping_restores_the_best_epoch')
NAIVE = t('test_naive_trains_each_task_alone_on_one_kept_model')
CUMULATIVE = t('test_cumulative_trains_on_everything_seen')
MULTI = t('test_multi_task_trains_once_on_all_tasks')
REPLAY = t('test_replay_splits_mem_size_over_seen_tasks_and_mixes_it_in')
SINGLE = t('test_single_model_one_fresh_model_per_task_and_the_tasks_own_model_answers')
POOLED = t('test_pooled_is_over_seen_tasks_only_and_fwt_uses_the_random_baseline')
PATCHCORE = t('test_patchcore_cl_keeps_mem_size_cl_patches_split_over_seen_tasks')
PADIM = t('test_padim_cl_keeps_exact_running_statistics_of_every_seen_task')
NB_METRICS, NB_EVALUATE, NB_STRATEGIES = 'nbs/05_metrics.ipynb', 'nbs/06_evaluate.ipynb', 'nbs/20_strategies.ipynb'
NB_PATCHCORE, NB_PADIM, NB_EXPERIMENT = 'nbs/12_models.patchcore.ipynb', 'nbs/13_models.padim.ipynb', 'nbs/30_experiment.ipynb'
EXP, STRAT, MET, EVA = 'clad/experiment.py', 'clad/strategies.py', 'clad/metrics.py', 'clad/evaluate.py'
PC, PD = 'clad/models/patchcore.py', 'clad/models/padim.py'
NEWS = 'tests/test_new_strategies.py'
EWC_T, LWF_T = f'{NEWS}::test_ewc_with_lambda_zero_is_naive_and_with_lambda_is_not', f'{NEWS}::test_lwf_with_alpha_zero_is_naive_and_with_alpha_is_not'
COMPRESSED_T = f'{NEWS}::test_compressed_replay_keeps_within_its_byte_budget'
GOLDEN_T = 'tests/test_strategy_golden.py::test_every_existing_strategy_gives_the_recorded_results'

BUGS = [
    # --- leak-free thresholds and normalisation, threshold_quantile
    Bug('thresholds-on-test', 'image and pixel thresholds fitted on the test set instead of the validation normals', EVA,
        "thr = (fit_threshold(val.scores, q), fit_threshold(val.maps, q)) if val is not None",
        "thr = (fit_threshold(test.scores, q), fit_threshold(test.maps, q)) if val is not None", [THRESHOLDS, NB_EVALUATE]),
    Bug('pixel-threshold-on-test', 'the pixel threshold fitted on the test maps', EVA,
        "fit_threshold(val.maps, q)) if val is not None", "fit_threshold(test.maps, q)) if val is not None",
        [THRESHOLDS, NB_EVALUATE]),
    Bug('threshold-quantile-ignored', 'a configured threshold_quantile ignored (0.99 always)', EVA,
        "q = cfg.threshold_quantile;", "q = 0.99;", [THRESHOLDS, SINGLE, NB_EVALUATE]),
    Bug('fit-threshold-ignores-quantile', 'fit_threshold uses 0.99 whatever quantile it is given', MET,
        "return float(np.quantile(v, quantile))", "return float(np.quantile(v, 0.99))", [THRESHOLDS, NB_METRICS]),
    Bug('image-f1-is-oracle', 'image_f1 reported at the oracle (test-set) threshold instead of the validation one', MET,
        "else: vals['image_f1'] = f1_at_threshold(s, y, threshold)", "else: vals['image_f1'] = curve_f1_max(c)[0]",
        [THRESHOLDS, NB_METRICS]),
    Bug('pixel-f1-test-quantile', 'pixel_f1 at a quantile of the test maps instead of the validation threshold', MET,
        "_np(masks).reshape(-1) > 0.5, pixel_threshold)", "_np(masks).reshape(-1) > 0.5, float(np.quantile(_np(maps), 0.99)))",
        [NB_METRICS]),
    Bug('normaliser-min-max', 'the standard normaliser uses min/max instead of mean/std', MET,
        "if method == 'standard': loc, scale = float(v.mean()), float(v.std())",
        "if method == 'standard': loc, scale = float(v.min()), float(v.max() - v.min())", [SINGLE, NB_METRICS]),
    Bug('normaliser-pixels-from-image-scores', 'pixel maps normalised with the image-score statistics', MET,
        "self.pixel_loc, self.pixel_scale = _loc_scale(p, self.method, self.quantile)",
        "self.pixel_loc, self.pixel_scale = _loc_scale(v, self.method, self.quantile)", [SINGLE, NB_METRICS]),
    Bug('pooled-normaliser-on-test', "single_model's pooled normalisers fitted on the test images", EVA,
        "val = scored[k][1] if k in scored else None", "val = scored[k][0] if k in scored else None", [SINGLE]),
    Bug('calibration-on-test', 'map calibration (EfficientAD) on the test images instead of the validation normals', EXP,
        "model.calibrate(make_loader(val, self.cfg,", "model.calibrate(make_loader([r for t in step.tasks for r in t.test], self.cfg,",
        [EARLY]),
    Bug('early-stopping-on-test', 'early stopping on test normals instead of the validation normals', STRAT,
        "return [r for t in step.tasks for r in t.val]", "return [r for t in step.tasks for r in t.test if r.label == 0]",
        [EARLY, MULTI, NB_STRATEGIES]),
    # --- best-epoch restore
    Bug('early-stopping-keeps-last-epoch', 'early stopping keeps the last epoch instead of restoring the best', EXP,
        "if best_state is not None: model.load_state_dict(best_state)", "if False: model.load_state_dict(best_state)",
        [EARLY, NB_EXPERIMENT]),
    # --- strategies: what each trains on, keeps, and which model answers
    Bug('multi-task-first-task-only', 'multi_task trains on the first task only', STRAT,
        "return [Step(0, list(tasks), 'joint')]", "return [Step(0, [tasks[0]], 'joint')]", [MULTI, NB_STRATEGIES]),
    Bug('multi-task-pools-first-task', 'after joint training only task 0 counts as seen', STRAT,
        "    def seen_tasks(self, step:Step) -> list[Task]: return self.tasks\n",
        "    def seen_tasks(self, step:Step) -> list[Task]: return self.tasks[:step.index + 1]\n", [MULTI, NB_STRATEGIES]),
    Bug('cumulative-current-task-only', 'cumulative trains on the current task only', STRAT,
        "return [r for t in self.tasks[:step.index + 1] for r in t.train]", "return [r for t in step.tasks for r in t.train]",
        [CUMULATIVE, NB_STRATEGIES]),
    Bug('cumulative-val-current-task-only', "cumulative stops early on the current task's validation normals only", STRAT,
        "return [r for t in self.tasks[:step.index + 1] for r in t.val]", "return [r for t in step.tasks for r in t.val]",
        [CUMULATIVE, NB_STRATEGIES]),
    Bug('fresh-model-every-step', 'naive (and every one-model strategy) restarts from a fresh model at every step', STRAT,
        "def needs_fresh_model(self, step:Step) -> bool: return False",
        "def needs_fresh_model(self, step:Step) -> bool: return True", [NAIVE, NB_STRATEGIES]),
    Bug('single-model-no-fresh-model', 'single_model keeps fine-tuning one model', STRAT,
        "def needs_fresh_model(self, step:Step) -> bool: return step.index > 0",
        "def needs_fresh_model(self, step:Step) -> bool: return False", [SINGLE, NB_STRATEGIES]),
    Bug('single-model-newest-answers', 'single_model answers every task with the newest model', STRAT,
        "def model_index_for(self, task_index:int, step:Step) -> int: return min(task_index, step.index)",
        "def model_index_for(self, task_index:int, step:Step) -> int: return step.index", [SINGLE, NB_STRATEGIES]),
    Bug('loop-ignores-model-index', 'the loop answers every task with the last model, whatever the strategy says', EXP,
        "if self.strategy.keeps_models: return lambda j: self.strategy.model_index_for(j, step)",
        "if False: return lambda j: self.strategy.model_index_for(j, step)", [SINGLE]),
    Bug('pooled-picks-most-anomalous', 'pooled single_model scores take the most anomalous model instead of the most normal', EVA,
        "best = z.argmin(0)", "best = z.argmax(0)", [SINGLE]),
    Bug('replay-mem-size-not-split', 'replay keeps mem_size images per task instead of mem_size over all seen tasks', STRAT,
        "size=min(self.cfg.mem_size // len(self.memory), len(source))", "size=min(self.cfg.mem_size, len(source))", [REPLAY, NB_STRATEGIES]),
    Bug('replay-redraws-dropped-images', "replay re-draws each task's share from all its training images", STRAT,
        "self._keep(step, k, self.memory[k]) for k", "self._keep(step, k, list(self.tasks[k].train)) for k", [REPLAY, NB_STRATEGIES]),
    Bug('replay-memory-holds-validation', 'the replay memory draws from training and validation images', STRAT,
        "for t in step.tasks: self.memory.setdefault(t.index, list(t.train))",
        "for t in step.tasks: self.memory.setdefault(t.index, list(t.train) + list(t.val))", [REPLAY, NB_STRATEGIES]),
    Bug('replay-not-mixed-in', 'the replay memory is kept but never mixed into the batches', STRAT,
        "for batch in loader: yield batch if self._draws is None else concat_batches(batch, next(self._draws))",
        "for batch in loader: yield batch", [REPLAY, GOLDEN_T]),
    Bug('loop-ignores-extra-loss', "the loop back-propagates the model's loss without the strategy's term", EXP,
        "total = loss if extra is None else loss + extra", "total = loss", [EWC_T, LWF_T]),
    # --- pooled = seen tasks only
    Bug('pooled-over-unseen-tasks', 'the pooled AUROC pools unseen tasks too', EVA,
        "pooled_over_models(seen_tasks, ev.scored,", "pooled_over_models(eval_tasks, ev.scored,", [POOLED, SINGLE, NB_EVALUATE]),
    # --- FWT's baseline
    Bug('fwt-on-the-diagonal', 'FWT measured after training on the task (R[j][j]) instead of before (R[j-1][j])', EVA,
        "_mean([R[at[j] - 1][j] - b[j] for j", "_mean([R[at[j]][j] - b[j] for j", [POOLED, NB_EVALUATE],
        alt=[("_mean([R[j - 1][j] - b[j] for j", "_mean([R[j][j] - b[j] for j")]),
    Bug('fwt-baseline-ignored', "FWT's baseline ignored (b_j = 0)", EVA,
        "b = [baseline] * T if np.isscalar(baseline) else list(baseline)", "b = [0.0] * T", [POOLED, NB_EVALUATE]),
    Bug('fwt-baseline-shifted', "FWT subtracts the previous task's baseline b_{j-1}", EVA,
        "R[at[j] - 1][j] - b[j] for j", "R[at[j] - 1][j] - b[j - 1] for j", [NB_EVALUATE],
        alt=[("R[j - 1][j] - b[j] for j", "R[j - 1][j] - b[j - 1] for j")]),
    Bug('fwt-random-aupro-baseline', "AU-PRO's random-scorer baseline taken as 0.5 instead of 0.15", EVA,
        "'pixel_aupro': 0.15}", "'pixel_aupro': 0.5}", [POOLED, NB_EVALUATE]),
    # --- memory budgets of PatchCore and PaDiM
    Bug('patchcore-budget-per-task', 'PatchCore gives every task the whole mem_size_cl', PC,
        "share = max(1, self.mem_size_cl // (len(self.bank_sizes) + 1))", "share = max(1, self.mem_size_cl)",
        [PATCHCORE, NB_PATCHCORE]),
    Bug('patchcore-old-banks-kept', "PatchCore never shrinks the old tasks' banks", PC,
        "banks = [b if len(b) <= share else self._coreset(b, share, task, 'old', k) for k, b in enumerate(self.banks)]",
        "banks = list(self.banks)", [PATCHCORE, NB_PATCHCORE]),
    Bug('patchcore-old-banks-from-new-data', "PatchCore refills old tasks' banks from the new task's patches", PC,
        "self._coreset(b, share, task, 'old', k)", "self._coreset(X, share, task, 'old', k)", [NB_PATCHCORE]),
    Bug('patchcore-mem-size-cl-not-read', 'PatchCore ignores the configured mem_size_cl', PC,
        "if mode == 'budget': self.mem_size_cl = int(budget)", "if mode == 'budget': pass", [PATCHCORE, NB_PATCHCORE]),
    Bug('patchcore-cl-flag-ignored', "PatchCore's `cl` strategy grows without budget whatever cfg.cl says", STRAT,
        "model.set_memory_update('budget' if self.cfg.cl else 'grow', budget=self.cfg.mem_size_cl)",
        "model.set_memory_update('grow', budget=self.cfg.mem_size_cl)", [PATCHCORE, NB_STRATEGIES]),
    Bug('padim-incremental-forgets', "PaDiM's incremental statistics restart at every task", PD,
        "keep = self.memory_update == 'budget' and self.sum_xx.ndim == 3", "keep = False", [PADIM, NB_PADIM]),
    Bug('padim-cl-grows', "PaDiM's `cl` strategy keeps one Gaussian per task (memory grows) whatever cfg.cl says", STRAT,
        "model.set_memory_update('budget' if self.cfg.cl else 'grow', budget=self.cfg.mem_size_cl)",
        "model.set_memory_update('grow', budget=self.cfg.mem_size_cl)", [PADIM, NB_STRATEGIES]),
    # --- the new strategies: each term does what its equation says
    Bug('ewc-lambda-ignored', 'EWC adds its penalty without the weight λ', STRAT,
        "return None if p is None else 0.5 * self.cfg.ewc_lambda * p", "return None if p is None else 0.5 * p", [NB_STRATEGIES]),
    Bug('ewc-no-decay', "online EWC sums the Fisher matrices without the decay γ", STRAT,
        "self.cfg.ewc_gamma * self.fisher[n] + f", "self.fisher[n] + f", [NB_STRATEGIES]),
    Bug('ewc-fisher-from-test', "EWC's Fisher estimated on the test images", STRAT,
        "new = diagonal_fisher(model, self.train_records(step),", "new = diagonal_fisher(model, [r for t in step.tasks for r in t.test],",
        [NB_STRATEGIES]),
    Bug('ewc-moves-the-model', "EWC's Fisher passes run on the model itself (its state moves)", STRAT,
        "probe = copy.deepcopy(model).train()", "probe = model.train()",
        [NB_STRATEGIES, f'{NEWS}::test_the_fisher_passes_leave_the_model_as_it_was']),
    Bug('lwf-distils-from-itself', 'LwF distils from the current model instead of a frozen copy', STRAT,
        "self.previous = copy.deepcopy(model).eval().requires_grad_(False)", "self.previous = model", [NB_STRATEGIES]),
    Bug('derpp-alpha-ignored', "DER++'s stored-output term without its weight α", STRAT,
        "terms.append(alpha * output_distance(out, target))", "terms.append(output_distance(out, target))", [NB_STRATEGIES]),
    Bug('derpp-beta-ignored', "DER++ always trains on the mixed batch, whatever β says", STRAT,
        "if beta != 1:  #", "if False:  #", [NB_STRATEGIES]),
    Bug('compressed-budget-per-task', 'compressed_replay gives every task the whole byte budget', STRAT,
        "share, order, total, keep = self.budget_bytes // len(self.memory),", "share, order, total, keep = self.budget_bytes,",
        [NB_STRATEGIES, COMPRESSED_T]),
    Bug('compressed-counts-decoded-bytes', "compressed_replay's memory figure counts decoded images, not the bytes kept", STRAT,
        "def memory_bytes(self) -> int: return sum(Path(r.path).stat().st_size for r in self.replay_records())",
        "def memory_bytes(self) -> int: return super().memory_bytes()", [NB_STRATEGIES, COMPRESSED_T]),
]


def notebook_of(module_text:str) -> str|None:
    "The notebook a module is exported from (nbdev's header line), relative to the repository."
    m = re.search(r'File to edit: ((?:\.\./)+)(nbs/[^\s]+\.ipynb)', module_text)
    return m.group(2) if m else None


def copy_repo(dest:Path):
    skip = shutil.ignore_patterns('.venv', '.git', 'output', '_site', '__pycache__', '.ipynb_checkpoints', 'jupyter_execute',
                                  '*.egg-info', '_proc')
    for item in REPO.iterdir():
        if item.name in ('.venv', '.git', 'output', '_site', '_proc') or item.name.endswith('.egg-info'): continue
        if item.is_dir(): shutil.copytree(item, dest / item.name, ignore=skip)
        else: shutil.copy2(item, dest / item.name)


def plant(copy:Path, bug:Bug) -> tuple[dict, str|None]:
    "Apply `bug` to the module and its notebook in `copy`; returns (originals to restore, problem or None)."
    mod = copy / bug.module
    text = mod.read_text()
    old, new = next(((o, n) for o, n in [(bug.old, bug.new), *bug.alt] if o in text), (bug.old, bug.new))
    n = text.count(old)
    if n != 1: return {}, f"pattern not found in {bug.module}" if n == 0 else f"pattern found {n} times in {bug.module}"
    nb_rel = notebook_of(text)
    if nb_rel is None: return {}, f"{bug.module} names no notebook"
    nb_path = copy / nb_rel
    nb_raw = nb_path.read_text(); nb = json.loads(nb_raw)
    hits = [c for c in nb['cells'] if c['cell_type'] == 'code' and old in ''.join(c['source'])]
    if len(hits) != 1 or ''.join(hits[0]['source']).count(old) != 1:
        return {}, f"pattern not found in {nb_rel}" if not hits else f"pattern not unique in {nb_rel}"
    originals = {mod: text, nb_path: nb_raw}
    mod.write_text(text.replace(old, new))
    try: py_compile.compile(str(mod), doraise=True)
    except py_compile.PyCompileError as e:
        restore(originals); return {}, f"substitution breaks {bug.module}: {e.msg.strip().splitlines()[-1]}"
    src = ''.join(hits[0]['source']).replace(old, new)
    lines = src.split('\n'); hits[0]['source'] = [l + '\n' for l in lines[:-1]] + [lines[-1]]
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return originals, None


def restore(originals:dict):
    for p, text in originals.items(): p.write_text(text)


def run_tests(copy:Path, tests:list, timeout:int) -> dict:
    "test -> (passed, seconds, last lines of output)."
    env = dict(os.environ, PYTHONPATH=str(copy), CLAD_ROOT=str(copy), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    bin_dir = Path(sys.executable).parent
    ids = [x for x in tests if not x.endswith('.ipynb')]; nbs = [x for x in tests if x.endswith('.ipynb')]
    out = {}
    if ids:
        t0 = time.time()
        # one pytest process, every node id reported separately
        r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rA', *ids], cwd=copy, env=env,
                           capture_output=True, text=True, timeout=timeout)
        secs = time.time() - t0; text = r.stdout + r.stderr
        for i in ids:
            failed = re.search(rf'^(FAILED|ERROR) {re.escape(i)}\b', text, re.M) is not None
            passed = re.search(rf'^PASSED {re.escape(i)}\b', text, re.M) is not None
            out[i] = (passed and not failed, secs, '\n'.join(text.splitlines()[-6:]))
    for nb in nbs:
        t0 = time.time()
        try:
            r = subprocess.run([str(bin_dir / 'nbdev_test'), '--path', nb], cwd=copy, env=env, capture_output=True, text=True,
                               timeout=timeout)
            ok, text = r.returncode == 0, r.stdout + r.stderr
        except subprocess.TimeoutExpired: ok, text = False, 'timed out'
        out[nb] = (ok, time.time() - t0, '\n'.join(text.splitlines()[-6:]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('-k', action='append', default=[], help='run the bugs whose name contains this (repeatable)')
    ap.add_argument('--check', action='store_true', help='only check that every pattern is found')
    ap.add_argument('--list', action='store_true', help='list the bugs and their tests')
    ap.add_argument('--copy', type=Path, help='where to make the scratch copy (default: a temporary folder)')
    ap.add_argument('--keep', action='store_true', help='keep the scratch copy')
    ap.add_argument('--no-baseline', action='store_true', help='skip the run of the tests on the unmodified copy')
    ap.add_argument('--timeout', type=int, default=1200, help='seconds per test command')
    a = ap.parse_args(argv)
    bugs = [b for b in BUGS if not a.k or any(k in b.name for k in a.k)]
    if a.list:
        for b in bugs: print(f'{b.name:40s} {b.what}\n{"":40s} tests: {", ".join(x.split("::")[-1] for x in b.tests)}')
        return 0
    copy = a.copy or Path(tempfile.mkdtemp(prefix='clad_faults_'))
    copy.mkdir(parents=True, exist_ok=True)
    copy_repo(copy)
    print(f'scratch copy: {copy}', flush=True)
    results, bad = [], 0
    try:
        if not a.check and not a.no_baseline:
            tests = sorted({x for b in bugs for x in b.tests})
            base = run_tests(copy, tests, a.timeout)
            broken = [x for x, (ok, _, _) in base.items() if not ok]
            for x in broken: print(f'BASELINE FAILS (proves nothing): {x}\n{base[x][2]}', flush=True)
            if broken: bad += 1
        for b in bugs:
            originals, problem = plant(copy, b)
            if problem: results.append((b, problem, [])); bad += 1; print(f'{b.name}: {problem}', flush=True); continue
            if a.check: restore(originals); results.append((b, 'pattern found', [])); continue
            try: res = run_tests(copy, b.tests, a.timeout)
            finally: restore(originals)
            caught_by = [x for x, (ok, _, _) in res.items() if not ok]
            verdict = 'caught' if caught_by else 'MISSED'
            if not caught_by: bad += 1
            results.append((b, verdict, caught_by))
            print(f'{b.name}: {verdict} by {", ".join(x.split("::")[-1] for x in caught_by) or "-"} '
                  f'(of {len(b.tests)}; {max((s for _, s, _ in res.values()), default=0):.0f}s)', flush=True)
    finally:
        if not a.keep and not a.copy: shutil.rmtree(copy, ignore_errors=True)
    print('\n| planted bug | verdict | caught by |\n|---|---|---|')
    for b, verdict, caught_by in results:
        print(f'| {b.name}: {b.what} | {verdict} | {", ".join(x.split("::")[-1] for x in caught_by) or "-"} |')
    n_caught = sum(v == 'caught' for _, v, _ in results)
    if not a.check: print(f'\n{n_caught} of {len(results)} planted bugs caught')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
