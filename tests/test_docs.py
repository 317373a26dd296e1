"""The documentation site in a real browser: build it (index + every model notebook), serve it on localhost, open
the pages in headless Chromium (which resolves no host but localhost) and check API docs, figures, equations typeset
by the site's own MathJax, links; save a screenshot.

Slow (it executes the model notebooks): a few minutes on 2 cores. Chromium is Debian's `chromium`, installed here
with apt when missing; the tests are skipped (with the reason) only when that install fails."""
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

# Building and executing the site takes ~10 minutes on 2 cores: run it with `make docs-test` (CLAD_TEST_DOCS=1).
pytestmark = pytest.mark.skipif(os.environ.get('CLAD_TEST_DOCS') != '1', reason='docs site + browser test: run `make docs-test`')

from clad.config import project_root
from clad.docs import build_site
from clad.models.base import MODEL_REGISTRY

ROOT = project_root()
MODEL_NBS = sorted(p.stem for p in (ROOT/'nbs').glob('1*_models.*.ipynb'))
CHROMIUM = '/usr/bin/chromium'


@pytest.fixture(scope='session')
def chromium():
    "Debian's chromium, installed with apt if missing."
    if not Path(CHROMIUM).exists():
        env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
        for cmd in (['apt-get', 'update'], ['apt-get', 'install', '-y', 'chromium']):
            try: r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e: pytest.skip(f'cannot install chromium: {" ".join(cmd)}: {e}')
            if r.returncode: pytest.skip(f'cannot install chromium: {" ".join(cmd)} failed: {r.stderr.strip()[-300:]}')
    if not Path(CHROMIUM).exists(): pytest.skip(f'apt installed chromium but {CHROMIUM} is missing')
    return CHROMIUM


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = build_site(tmp_path_factory.mktemp('docs')/'_site', notebooks=['index', *MODEL_NBS], timeout=420)
    return out, json.loads((out/'build-report.json').read_text())


# The browser opens this page, which loads the page under test in a same-origin frame and writes what it found
# (headings, signatures, images with their decoded size) into the DOM that `--dump-dom` prints.
CHECK_HTML = '''<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="f" style="width:1200px;height:900px"></iframe><script>
const page = new URLSearchParams(location.search).get('page');
const f = document.getElementById('f');
f.onload = () => { const d = f.contentDocument, w = f.contentWindow; const imgs = [...d.querySelectorAll('img')];
  const typeset = w.MathJax && w.MathJax.startup && w.MathJax.startup.promise;  // resolves once the page is typeset
  Promise.all([...imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })), typeset]).then(() => {
    const prose = d.body.cloneNode(true);  // the text a reader sees, code and scripts left out
    prose.querySelectorAll('pre, code, script, style, mjx-assistive-mml').forEach(e => e.remove());
    document.getElementById('result').textContent = JSON.stringify({
      mathjax: !!(w.MathJax && w.MathJax.startup), mjx: d.querySelectorAll('mjx-container').length, mjx_errors: d.querySelectorAll('mjx-merror').length,
      text: prose.textContent, scripts: [...d.querySelectorAll('script[src]')].map(e => e.src),
      title: d.title,
      anchors: [...d.querySelectorAll('[id]')].map(e => [e.id, e.textContent.trim().slice(0, 80)]),
      pres: [...d.querySelectorAll('pre')].map(e => e.textContent.slice(0, 400)),
      imgs: imgs.map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight,
                            output: !!i.closest('.cell_output')})),
      svgs: d.querySelectorAll('.cell_output svg').length}); }); };
f.src = page;
</script></body></html>'''


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith('/__check__.html'):
            body = CHECK_HTML.encode()
            self.send_response(200); self.send_header('Content-Type', 'text/html'); self.send_header('Content-Length', str(len(body)))
            self.end_headers(); self.wfile.write(body); return
        super().do_GET()
    def log_message(self, *a): pass


@pytest.fixture(scope='module')
def server(site):
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(site[0])))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}'
    srv.shutdown(); srv.server_close()


def _chrome(chromium, *args, timeout=120):
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',  # offline: only the local server resolves
               f'--user-data-dir={profile}', *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _inspect(chromium, server, page):
    r = _chrome(chromium, '--virtual-time-budget=20000', '--dump-dom', f'{server}/__check__.html?page={page}')
    m = re.search(r'<pre id="result">(.*?)</pre>', r.stdout, re.S)
    assert m and m.group(1) != 'pending', f'the browser did not finish {page}: {r.stderr[-500:]}'
    import html
    return json.loads(html.unescape(m.group(1)))


def _model_pages():
    "(notebook stem, page, class name) of every registered model whose notebook exists."
    import importlib
    for name in MODEL_NBS: importlib.import_module('clad.' + name.split('_', 1)[1])  # registers the models
    out = []
    for cls in MODEL_REGISTRY.values():
        stem = next((s for s in MODEL_NBS if 'clad.' + s.split('_', 1)[1] == cls.__module__), None)
        if stem: out.append((stem, cls.__module__.removeprefix('clad.') + '.html', cls.__name__))
    return sorted(set(out))


@pytest.mark.parametrize('stem,page,cls', _model_pages(), ids=lambda v: v if isinstance(v, str) and v.endswith('.html') else '')
def test_model_page(chromium, server, site, stem, page, cls):
    rep = {r['notebook']: r for r in site[1]['notebooks']}[stem + '.ipynb']
    found = _inspect(chromium, server, page)
    # API docs: show_doc's heading (anchor named after the class) and its signature
    assert any(i == cls.lower() and t == cls for i, t in found['anchors']), f'{page}: no show_doc heading for {cls} ({rep})'
    assert any(re.search(rf'\b{cls}\(', p) for p in found['pres']), f'{page}: no signature of {cls}'
    # at least one figure drawn by the notebook, decoded by the browser
    figs = [i for i in found['imgs'] if i['output'] and i['w'] > 0] 
    assert figs or found['svgs'], f'{page}: no figure in the cell outputs (notebook {rep["status"]}); images: {found["imgs"]}'


@pytest.mark.parametrize('page', ['index.html', *sorted({p for _, p, _ in _model_pages()})])
def test_equations_typeset_offline(chromium, server, site, page):
    "MathJax comes from the site itself (the browser resolves no other host) and typesets every equation."
    found = _inspect(chromium, server, page)
    outside = [s for s in found['scripts'] if not s.startswith(server + '/')]
    assert not outside, f'{page}: scripts from outside the site: {outside}'
    assert found['mathjax'], f'{page}: MathJax did not load (scripts: {found["scripts"]})'
    assert found['mjx'] > 0 and found['mjx_errors'] == 0, f'{page}: {found["mjx"]} typeset equations, {found["mjx_errors"]} TeX errors'
    raw = [m.group(0) for m in re.finditer(r'.{0,30}(\\\(|\\\[|\$\$).{0,30}', found['text'])]
    assert not raw, f'{page}: raw TeX left in the text: {raw[:5]}'


def test_base_page_api_docs(chromium, server, site):
    found = _inspect(chromium, server, 'models.base.html')
    assert any(i == 'anomalymodel' and t == 'AnomalyModel' for i, t in found['anchors'])


class _Links(HTMLParser):
    def __init__(self): super().__init__(); self.urls = []
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ('href', 'src') and v: self.urls.append(v)


def test_internal_links_resolve(server, site):
    "Crawl from index.html: every internal href/src returns 200 (pages of notebooks left out of this build excepted)."
    left_out = set(site[1]['pages_left_out'])
    todo, seen, bad = [server + '/index.html'], set(), []
    while todo:
        url = todo.pop()
        if url in seen: continue
        seen.add(url)
        if urllib.parse.urlsplit(url).path.lstrip('/') in left_out: continue
        try:
            with urllib.request.urlopen(url, timeout=30) as r: status, body, ctype = r.status, r.read(), r.headers.get_content_type()
        except urllib.error.HTTPError as e: bad.append((url, e.code)); continue
        if status != 200: bad.append((url, status)); continue
        if ctype != 'text/html': continue
        p = _Links(); p.feed(body.decode('utf-8', 'replace'))
        for u in p.urls:
            full = urllib.parse.urldefrag(urllib.parse.urljoin(url, u))[0].split('?')[0]
            if full.startswith(server + '/'): todo.append(full)
    assert len(seen) > 10, seen
    assert not bad, bad


def test_screenshot(chromium, server, site, tmp_path):
    page = _model_pages()[0][1] if _model_pages() else 'index.html'
    shot = tmp_path/'docs-page.png'
    r = _chrome(chromium, '--window-size=1280,1600', '--hide-scrollbars', f'--screenshot={shot}', f'{server}/{page}')
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-500:]
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    print(f'screenshot of {page}: {shot}')
    keep = os.environ.get('CLAD_DOCS_SCREENSHOT')  # e.g. _site/screenshot.png, to keep one outside pytest's tmp dir
    if keep: shutil.copy(shot, keep)
