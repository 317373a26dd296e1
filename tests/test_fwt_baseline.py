"""FWT is a difference to a baseline; results.json and the run's final table say which one."""
from clad.evaluate import METRICS, RunRecorder
from clad.report import final_table


def _record(baseline=None):
    rec = RunRecorder({}, ['a', 'b'], data=dict(name='t', path='', fingerprint='none'))
    for t in range(2):
        for j in range(2): rec.add_row(t, j, dict.fromkeys(METRICS, 0.7 if j <= t else 0.6))
    if baseline is not None:
        for j in range(2): rec.add_baseline(j, dict.fromkeys(METRICS, baseline))
    return rec.results()


def test_random_scorer_labels():
    s = _record()['summary']
    assert (s['image_auroc']['fwt_baseline'], s['pixel_aupro']['fwt_baseline']) == ('random scorer (0.5)', 'random scorer (0.15)')
    assert abs(s['image_auroc']['fwt'] - 0.1) < 1e-12 and abs(s['pixel_aupro']['fwt'] - 0.45) < 1e-12
    assert s['pixel_ap']['fwt'] is None and s['pixel_ap']['fwt_baseline'] is None  # no random scorer for AP: no FWT, no label


def test_untrained_model_label():
    s = _record(baseline=0.4)['summary']
    assert all(s[m]['fwt_baseline'] == 'untrained model' for m in METRICS)
    assert abs(s['pixel_ap']['fwt'] - 0.2) < 1e-12


def test_final_table_shows_the_label():
    t = final_table(_record())
    text = getattr(t, 'data', t)  # an IPython Markdown object (its .data is the Markdown text)
    line = next((l for l in text.splitlines() if 'FWT baseline' in l and 'image AUROC' in l), None)
    assert line is not None and 'random scorer (0.5)' in line, text
    assert any('FWT baseline' in l and 'pixel AU-PRO' in l and 'random scorer (0.15)' in l for l in text.splitlines()), text
