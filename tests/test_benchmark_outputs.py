"""Smoke and tiny benchmark runs write under outputs/ unless told where; the tracked results stay as committed."""

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TRACKED = [BENCHMARKS / "results", BENCHMARKS / "toy" / "results"]


def _digests():
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for folder in TRACKED for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture()
def benchmark_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS / "toy"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_the_results_path_of_smoke_runs_is_under_outputs(benchmark_modules, tmp_path):
    machine_info = benchmark_modules("machine_info")
    tracked = BENCHMARKS / "results" / "train_full_size.txt"
    assert machine_info.results_path(tracked, smoke=False) == tracked
    assert machine_info.results_path(tracked, smoke=True) == REPO / "outputs" / "benchmarks" / "train_full_size.txt"
    assert machine_info.results_path(tracked, smoke=True, given=tmp_path / "r.txt") == tmp_path / "r.txt"
    assert machine_info.results_path(tracked, smoke=False, given=tmp_path / "r.txt") == tmp_path / "r.txt"


def test_few_step_writes_the_tracked_results_only_for_the_run_they_come_from(benchmark_modules, tmp_path):
    few_step = benchmark_modules("few_step")
    assert few_step.default_results_dir(few_step.DEFAULT_WORK_DIR) == BENCHMARKS / "toy" / "results"
    assert few_step.default_results_dir(REPO / "outputs" / "toy-smoke") == REPO / "outputs" / "toy-smoke" / "results"
    assert few_step.default_results_dir(tmp_path, given=BENCHMARKS / "toy" / "results") == BENCHMARKS / "toy" / "results"


def test_smoke_and_tiny_runs_leave_the_tracked_results_alone(tmp_path):
    # the cheap smoke runs, run as a user would, with their default output paths: calibrate_world --smoke writes
    # its results, train_full_size --tiny appends its results after a build that fails at once (a 1-second timeout)
    before = _digests()
    assert before, "no tracked results found"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    smoke_dir = REPO / "outputs" / "benchmarks" / "calibrate_world"
    tiny_file = REPO / "outputs" / "benchmarks" / "train_full_size.txt"
    tiny_before = tiny_file.read_text() if tiny_file.is_file() else ""
    made = [p for p in (REPO / "outputs", REPO / "outputs" / "benchmarks") if not p.exists()]
    try:
        calibrate = subprocess.run([sys.executable, str(BENCHMARKS / "toy" / "calibrate_world.py"), "--smoke"],
                                   env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert calibrate.returncode == 0, calibrate.stderr[-3000:]
        assert (smoke_dir / "world_calibration.json").is_file()
        tiny = subprocess.run([sys.executable, str(BENCHMARKS / "train_full_size.py"), "--tiny", "--timeout", "1",
                               "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert f"-> {tiny_file}" in tiny.stdout, tiny.stdout[-3000:] + tiny.stderr[-3000:]
        assert tiny_file.read_text().startswith(tiny_before) and len(tiny_file.read_text()) > len(tiny_before)
    finally:
        shutil.rmtree(smoke_dir, ignore_errors=True)
        if tiny_before:
            tiny_file.write_text(tiny_before)
        else:
            tiny_file.unlink(missing_ok=True)
        for folder in reversed(made):  # the folders this test made, if empty again
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    assert _digests() == before
