"""Run a command and fail if it created, changed or removed anything under a folder (by default the project's output/).

    python tools/output_guard.py output -- .venv/bin/python -m pytest -q tests

`make test` runs its test commands through this guard: tests write into temporary folders, and a test that writes into
the user's run folders is a bug the guard names. A file counts as changed when its size or modification time (ns)
changed; a folder when it appeared or disappeared. Exit status: the command's own when it failed, else 1 when the
folder changed, else 0. Standard library only, so it runs with any Python."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def snapshot(folder: str | Path) -> dict:
    "relative path -> ('dir',) or ('file', size, mtime_ns) for everything under `folder` (the folder itself as '.'); {} if absent."
    folder = Path(folder)
    if not folder.exists(): return {}
    out = {'.': ('dir',)}
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for d in dirnames: out[str((base/d).relative_to(folder))] = ('dir',)
        for f in filenames:
            p = base/f
            try: st = p.lstat()
            except FileNotFoundError: continue  # removed while we walked
            out[str(p.relative_to(folder))] = ('file', st.st_size, st.st_mtime_ns)
    return out


def changes(before: dict, after: dict) -> dict:
    "{'new': [...], 'changed': [...], 'removed': [...]}: sorted relative paths."
    return dict(new=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)),
                changed=sorted(k for k in set(before) & set(after) if before[k] != after[k]))


def report(folder: str | Path, diff: dict, limit: int = 20) -> str:
    "The message naming what changed under `folder` ('' when nothing did)."
    lines = []
    for kind in ('new', 'changed', 'removed'):
        paths = diff[kind]
        for p in paths[:limit]: lines.append(f'  {kind:8} {Path(folder)/p if p != "." else Path(folder)}')
        if len(paths) > limit: lines.append(f'  ... and {len(paths) - limit} more {kind}')
    if not lines: return ''
    return (f'output guard: the tests wrote into {folder}/ (they must use temporary folders):\n' + '\n'.join(lines) +
            f'\n(if you ran an experiment into {folder}/ at the same time, run the tests again on their own)')


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--' not in argv or argv.index('--') != 1 or len(argv) < 3:
        print('usage: output_guard.py FOLDER -- COMMAND [ARG ...]', file=sys.stderr); return 2
    folder, cmd = argv[0], argv[2:]
    before = snapshot(folder)
    try: rc = subprocess.call(cmd)
    except OSError as e: print(f'output guard: cannot run {cmd[0]!r}: {e}', file=sys.stderr); return 2
    except KeyboardInterrupt: rc = 130
    if rc < 0: rc = 128 - rc  # killed by a signal: the shell's convention
    msg = report(folder, changes(before, snapshot(folder)))
    if msg: print(msg, file=sys.stderr)
    return rc if rc else (1 if msg else 0)


if __name__ == '__main__': sys.exit(main())
