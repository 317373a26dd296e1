"""The strategy API's redesign left every result unchanged: each existing strategy's matrices, pooled metrics, routing
accuracy and memory figures on a fixed seed equal the values recorded before it (tools/strategy_golden.py)."""
import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location('strategy_golden', Path(__file__).resolve().parents[1]/'tools'/'strategy_golden.py')
golden = importlib.util.module_from_spec(spec); spec.loader.exec_module(golden)


def test_every_existing_strategy_gives_the_recorded_results():
    recorded = json.loads(golden.GOLDEN.read_text())
    assert set(recorded) == {golden.case_name(*c) for c in golden.CASES}
    got = json.loads(json.dumps(golden.record()))
    assert golden.differences(recorded, got) == []


def test_the_comparison_sees_a_changed_number():
    recorded = json.loads(golden.GOLDEN.read_text())
    changed = json.loads(json.dumps(recorded))
    changed['stfpm/replay']['matrices']['image_auroc'][1][0] += 1e-3
    assert golden.differences(recorded, changed) == ['/stfpm/replay/matrices/image_auroc[1][0]: '
                                                     f"{recorded['stfpm/replay']['matrices']['image_auroc'][1][0]} vs "
                                                     f"{changed['stfpm/replay']['matrices']['image_auroc'][1][0]}"]


def test_the_recording_refuses_a_process_whose_kernels_are_not_pinned(tmp_path):
    "Unpinned, oneDNN picks AVX-512 or AMX kernels where the processor has them and the trained numbers move."
    import os, subprocess, sys
    env = {k: v for k, v in os.environ.items() if k not in golden.PINNED_KERNELS}
    run = subprocess.run([sys.executable, golden.__file__, '--record-into', str(tmp_path/'x.json')], env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0 and 'ONEDNN_MAX_CPU_ISA' in run.stderr and not (tmp_path/'x.json').exists()
