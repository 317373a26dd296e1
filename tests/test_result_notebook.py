"""The result notebook: nbs/run_experiment.ipynb executed with papermill on a tiny dataset reads as a report.

Each table once, each figure once, no stderr, no warnings, no huge outputs, provenance shown, and nothing written into the
repository's output/ (nbdev_test leaves the template out: its defaults are a real run)."""
import json
from collections import Counter
from pathlib import Path

import papermill as pm
import pytest

from clad.data import write_tiny_mvtec

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / 'nbs' / 'run_experiment.ipynb'
TINY = dict(img_size=32, backbone='resnet18', pretrained='false', num_tasks=2, num_epochs=2, batch_size=4, device='cpu')
MAX_TEXT = 20_000  # characters of text output per code cell


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    return write_tiny_mvtec(tmp_path_factory.mktemp('data') / 'tiny', categories=['bottle', 'cable'], n_train=8, n_test_good=3,
                            n_test_defect=3, size=32)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob('*')} if folder.exists() else {}


def _text(x) -> str:
    return ''.join(x) if isinstance(x, list) else str(x)


def execute(tmp: Path, data: Path, name: str = 'result.ipynb', **params) -> tuple[dict, Path]:
    "Run the template as `make experiment` does (kernel in nbs/) into `tmp`; returns the executed notebook and the output folder."
    out, result = tmp / 'out', tmp / name
    guarded = [ROOT / 'output', ROOT / 'nbs' / 'output']
    before = [_snapshot(d) for d in guarded]
    pm.execute_notebook(str(TEMPLATE), str(result), parameters=dict(TINY, data_path=str(data), output_dir=str(out), **params),
                        cwd=str(ROOT / 'nbs'), kernel_name='python3', progress_bar=False)
    assert [_snapshot(d) for d in guarded] == before, 'the result notebook wrote into the repository'
    return json.loads(result.read_text()), out


def sections(nb: dict) -> dict:
    "'## heading' -> the outputs of the code cells under it."
    out, current = {}, None
    for c in nb['cells']:
        if c['cell_type'] == 'markdown':
            for line in _text(c['source']).splitlines():
                if line.startswith('## '): current = line[3:].strip(); out.setdefault(current, [])
        elif current is not None: out[current] += c['outputs']
    return out


def check_clean(nb: dict):
    "No errors, no stderr, no warnings, no raw-string duplicates, every code cell's text small."
    tables = Counter()
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        size = 0
        for o in c['outputs']:
            assert o['output_type'] != 'error', f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
            if o['output_type'] == 'stream':
                text = _text(o['text'])
                assert o['name'] == 'stdout', f'cell {i} writes to stderr: {text[:300]!r}'
            else:
                data = o.get('data', {})
                text = _text(data.get('text/markdown', '')) + _text(data.get('text/plain', ''))
                if o['output_type'] == 'execute_result':  # a returned value must be a rich object, never a str/int repr
                    assert set(data) & {'text/markdown', 'image/png'}, f'cell {i} shows a plain value: {text[:200]!r}'
                if 'text/markdown' in data and '|---' in _text(data['text/markdown']): tables[_text(data['text/markdown'])] += 1
                assert '|---' not in _text(data.get('text/plain', '')), f'cell {i}: a table shown as a raw string'
            assert 'warning' not in text.lower(), f'cell {i} shows a warning: {text[:300]!r}'
            size += len(text)
        assert size < MAX_TEXT, f'cell {i}: {size} characters of text output'
    twice = [t.splitlines()[0] for t, n in tables.items() if n > 1]
    assert not twice, f'tables shown more than once: {twice}'


def counts(outputs: list) -> tuple[int, int]:
    "(figures, Markdown outputs) among `outputs`."
    png = sum('image/png' in o.get('data', {}) for o in outputs)
    md = sum('text/markdown' in o.get('data', {}) for o in outputs)
    return png, md


def check_report(nb: dict, run_dir: Path, trained: bool, reused: bool = False):
    rec = json.loads((run_dir / 'results.json').read_text())
    assert rec['status'] == 'complete'
    sec = sections(nb)
    expected = {'The run': (0, 1), 'Configuration': (0, 1), 'Data': (1, 1), 'Training and evaluation': (0, 0),
                'Training curves': (1, 0) if trained else (0, 1), 'Per-step summary': (0, 1), 'Result matrices': (1, 0),
                'Average over the tasks seen so far': (1, 0), 'Final table': (0, 1),
                "Per class and the literature's protocols": (0, 1), 'Anomaly maps': (2, 0),
                'Provenance': (0, 1), 'Files': (0, 1), 'Compared with the original CLAD': (0, 0)}
    assert {k: counts(v) for k, v in sec.items()} == expected
    # one summary line per step, on stdout (or one saying the finished run is reused)
    lines = [l for o in sec['Training and evaluation'] if o['output_type'] == 'stream' for l in _text(o['text']).splitlines()]
    if reused: assert len(lines) == 1 and 'already complete' in lines[0], lines
    else: assert [l.split('] ')[1].split(':')[0] for l in lines] == ['step 1/2 bottle', 'step 2/2 cable'], lines
    md = lambda name: '\n'.join(_text(o['data']['text/markdown']) for o in sec[name] if 'text/markdown' in o.get('data', {}))
    prov = md('Provenance')
    assert f"| data | fingerprint | `{rec['data']['fingerprint']}` |" in prov
    assert f"| data | path | `{rec['data']['path']}` |" in prov
    assert '| data | tasks | bottle → cable |' in prov
    assert '| weights | backbone | resnet18 |' in prov and '| weights | source | random-init |' in prov
    assert f"Results go to `{run_dir}`" in md('The run')
    assert '| backbone | \'resnet18\' | overrides |' in md('Configuration')
    assert f"| image AUROC | {rec['summary']['image_auroc']['final_avg']:.3f} |" in md('Final table')
    assert '`results.json`' in md('Files')
    # one-class tasks, no protocol: the per-class results repeat the matrices, and the section says so
    assert rec['class_matrices'] == rec['matrices'] and rec['config']['protocol'] == ''
    assert md("Per class and the literature's protocols").startswith('*No protocol of the literature is named')
    return rec


@pytest.fixture(scope='module')
def patchcore_run(tiny_data, tmp_path_factory):
    "PatchCore with its default strategy (cl), executed once for the tests below."
    tmp = tmp_path_factory.mktemp('patchcore')
    return tmp, *execute(tmp, tiny_data, model='patchcore')


def test_stfpm_result_notebook(tiny_data, tmp_path):
    nb, out = execute(tmp_path, tiny_data, model='stfpm')
    check_clean(nb)
    rec = check_report(nb, out / 'stfpm' / 'replay' / 'seed0', trained=True)
    assert rec['config']['sample_strategy'] == 'replay' and rec['config']['pretrained'] is False


def test_patchcore_result_notebook(patchcore_run):
    _, nb, out = patchcore_run
    check_clean(nb)
    check_report(nb, out / 'patchcore' / 'cl' / 'seed0', trained=False)
    curves = sections(nb)['Training curves']
    assert _text(curves[0]['data']['text/markdown']).startswith('*No gradient training in this run')


def test_finished_run_is_reused_and_says_so(tiny_data, patchcore_run):
    tmp, first, out = patchcore_run
    nb, _ = execute(tmp, tiny_data, name='again.ipynb', model='patchcore')
    check_clean(nb)
    run = '\n'.join(_text(o['data']['text/markdown']) for o in sections(nb)['The run'] if 'text/markdown' in o.get('data', {}))
    assert 'it is **reused**, not trained again' in run
    assert 'reused' not in '\n'.join(_text(o['data']['text/markdown']) for o in sections(first)['The run'])
    check_report(nb, out / 'patchcore' / 'cl' / 'seed0', trained=False, reused=True)  # the reused record gives the same report


@pytest.mark.parametrize('model', ['padim', 'stfpm'])
def test_protocol_run_shows_the_protocol_and_per_class_tables(tmp_path, model):
    "A VisA protocol (8 classes, then 4, with masks) through the result notebook: its figures, the published column, per class."
    from clad.data import VISA_CLASSES, write_tiny_visa
    data = write_tiny_visa(tmp_path / 'visa', VISA_CLASSES, n_train=3, n_test_good=1, n_test_defect=1, size=32, mask_value=1)
    nb, out = execute(tmp_path, data, model=model, config='configurations/protocols/visa_8-4.json')
    check_clean(nb)
    rec = json.loads((out / model / rec_strategy(out, model) / 'seed0' / 'results.json').read_text())
    sec = sections(nb)["Per class and the literature's protocols"]
    assert counts(sec) == (0, 1)
    text = _text(sec[0]['data']['text/markdown'])
    s = rec['class_summary']
    assert text.startswith('**Protocol `visa_8-4`** — IUF, One-for-More: 8 VisA classes, then 4.')
    assert f"| final image AUROC, mean over the classes seen | {s['image_auroc']['avg_seen'][-1]:.3f} |" in text
    assert f"| final pixel AUROC, mean over the classes seen | {s['pixel_auroc']['avg_seen'][-1]:.3f} |" in text
    last = {m: rec['class_matrices'][m][-1][VISA_CLASSES.index('pcb3')] for m in ('image_auroc', 'pixel_auroc', 'pixel_ap', 'pixel_aupro')}
    assert ('| pcb3 | pcb2+pcb3+pcb4+pipe_fryum | 2 | ' + ' | '.join(f'{v:.3f}' for v in last.values()) + ' |') in text
    assert all(isinstance(v, float) for v in rec['class_matrices']['pixel_aupro'][-1])  # masks: pixel metrics per class


def test_a_new_strategy_with_its_settings_through_the_notebook(tiny_data, tmp_path):
    "DER++ with α and β given through `settings`: the run uses them and records them; the report stays clean."
    nb, out = execute(tmp_path, tiny_data, model='stfpm', strategy='derpp', settings='{"derpp_alpha": 0.25, "derpp_beta": 0.75}')
    check_clean(nb)
    rec = check_report(nb, out / 'stfpm' / 'derpp' / 'seed0', trained=True)
    assert (rec['config']['derpp_alpha'], rec['config']['derpp_beta']) == (0.25, 0.75)
    assert rec['strategy'][-1]['name'] == 'derpp' and rec['strategy'][-1]['stored_outputs'] > 0
    with pytest.raises(pm.PapermillExecutionError, match=r"settings: expected a JSON object of config fields"):
        execute(tmp_path, tiny_data, name='bad.ipynb', model='stfpm', settings='derpp_alpha=1')


def rec_strategy(out: Path, model: str) -> str:
    return next((out / model).iterdir()).name


def test_bad_parameter_names_itself(tiny_data, tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"progress: expected one of \['auto', 'true', 'false'\], got 'sometimes'"):
        execute(tmp_path, tiny_data, model='stfpm', progress='sometimes')


def test_nbdev_test_skips_the_template():
    "nbdev_test would run the template's defaults (a real run, into output/): its frontmatter says skip_exec."
    # what nbdev.test.test_nb reads before it decides to skip; calling test_nb itself would run the defaults if this broke
    from fastcore.basics import str2bool
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    fm = NBProcessor(TEMPLATE, procs=FrontmatterProc, process=True).nb.frontmatter_
    assert str2bool(fm.get('skip_exec', False)) is True
    assert fm['title'] == 'Run an experiment'  # the skip line did not swallow the title
