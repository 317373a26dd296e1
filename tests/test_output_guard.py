"""tools/output_guard.py, the guard `make test` runs its test commands through: it must name every file a command
created, changed or removed under the guarded folder, and pass a command that only reads it."""
import subprocess
import sys
from pathlib import Path

from clad.config import project_root

GUARD = project_root()/'tools'/'output_guard.py'


def guard(folder, code):
    "Run `python -c code` under the guard of `folder`."
    return subprocess.run([sys.executable, str(GUARD), str(folder), '--', sys.executable, '-c', code],
                          capture_output=True, text=True, timeout=60)


def planted(tmp_path):
    out = tmp_path/'output'
    (out/'stfpm'/'replay'/'seed0').mkdir(parents=True)
    (out/'stfpm'/'replay'/'seed0'/'results.json').write_text('{}')
    (out/'old.txt').write_text('old')
    return out


def test_reading_passes(tmp_path):
    out = planted(tmp_path)
    r = guard(out, f"import pathlib; print(sorted(p.name for p in pathlib.Path({str(out)!r}).rglob('*')))")
    assert r.returncode == 0, r.stderr
    assert 'results.json' in r.stdout and r.stderr == ''


def test_a_planted_write_is_named(tmp_path):
    out = planted(tmp_path)
    r = guard(out, f"import pathlib; p = pathlib.Path({str(out)!r}); (p/'stfpm'/'naive'/'seed1').mkdir(parents=True); "
                   f"(p/'stfpm'/'naive'/'seed1'/'results.json').write_text('x')")
    assert r.returncode == 1
    assert f"new      {out/'stfpm'/'naive'/'seed1'/'results.json'}" in r.stderr
    assert f"new      {out/'stfpm'/'naive'}" in r.stderr and 'must use temporary folders' in r.stderr


def test_changed_and_removed_files_are_named(tmp_path):
    out = planted(tmp_path)
    r = guard(out, f"import pathlib; p = pathlib.Path({str(out)!r}); (p/'old.txt').write_text('new!'); "
                   f"(p/'stfpm'/'replay'/'seed0'/'results.json').unlink()")
    assert r.returncode == 1
    assert f"changed  {out/'old.txt'}" in r.stderr
    assert f"removed  {out/'stfpm'/'replay'/'seed0'/'results.json'}" in r.stderr


def test_a_missing_folder_that_appears_is_named(tmp_path):
    out = tmp_path/'output'
    r = guard(out, f"import pathlib; (pathlib.Path({str(out)!r})/'a').mkdir(parents=True)")
    assert r.returncode == 1 and f"new      {out}\n" in r.stderr and f"new      {out/'a'}" in r.stderr


def test_the_command_status_wins(tmp_path):
    out = planted(tmp_path)
    assert guard(out, 'import sys; sys.exit(3)').returncode == 3
    r = guard(out, f"import pathlib, sys; (pathlib.Path({str(out)!r})/'x').write_text('1'); sys.exit(4)")
    assert r.returncode == 4 and 'new      ' in r.stderr  # a failing test that also wrote is still reported


def test_usage():
    r = subprocess.run([sys.executable, str(GUARD), 'output'], capture_output=True, text=True)
    assert r.returncode == 2 and 'usage' in r.stderr


def test_make_test_runs_its_commands_under_the_guard():
    make = (project_root()/'Makefile').read_text()
    recipe = make.split('\ntest:', 1)[1].split('\n\n', 1)[0]
    lines = [l.strip() for l in recipe.splitlines()[1:] if l.startswith('\t')]
    assert any('nbdev_test' in l for l in lines) and any('pytest' in l for l in lines), lines
    assert all(l.startswith('$(GUARD)') for l in lines if 'nbdev_test' in l or 'pytest' in l), lines
    assert 'tools/output_guard.py output --' in make
