"""`torchrun --nproc_per_node 2 -m slim_diffusers.cli evaluate ...` ends with one merged rows.jsonl and the report."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from slim_diffusers.evaluation.harness import latest_rows
from slim_diffusers.evaluation.run import merge_row_shards

from .conftest import NUM_IMAGES

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_two_torchrun_processes_end_with_merged_rows_and_the_report(eval_model_dir, eval_classifier_dir,
                                                                     eval_dataset_dir, tmp_path):
    out = tmp_path / "eval"
    evaluate = ["-m", "slim_diffusers.cli", "evaluate", "--model", str(eval_model_dir), "--steps", "1",
                "--strength", "0.5", "--dataset", str(eval_dataset_dir), "--classifiers", str(eval_classifier_dir),
                "--baselines", "jpeg", "--qualities", "10", "-o", str(out)]
    # two gloo processes on a machine without CUDA (utils.distributed.use_cpu_workers)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), *evaluate]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    per_process = NUM_IMAGES // 2 * 2  # its half of the images, SLIM and JPEG each
    assert f"process 0: {per_process} rows written" in result.stdout
    assert f"process 1: {per_process} rows written" in result.stdout

    assert not list(out.glob("rows.rank*.jsonl"))
    rows = _rows(out / "rows.jsonl")
    assert sorted((r["codec"], r["index"]) for r in rows) == sorted(
        (codec, i) for codec in ("SLIM", "JPEG") for i in range(NUM_IMAGES))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["rows"] == 2 * NUM_IMAGES
    assert (out / "bd_rate.md").is_file() and (out / "rate_accuracy.png").is_file()
    assert "summary.json, rate_accuracy.png, bd_rate.md ->" in result.stdout

    # the merged file is what a resumed run reads: one process now finds every row finished
    again = subprocess.run([sys.executable, *evaluate], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"process 0: 0 rows written, {2 * NUM_IMAGES} found finished" in again.stdout
    assert _rows(out / "rows.jsonl") == rows


def test_merging_keeps_one_row_per_key_the_last_written(tmp_path):
    def row(index, codec, bpp):
        return {"codec": codec, "rate_point": "10", "index": index, "bpp": bpp, "top5": {}}

    (tmp_path / "rows.jsonl").write_text(json.dumps(row(0, "JPEG", 1.0)) + "\n")  # an earlier one-process run
    (tmp_path / "rows.rank0.jsonl").write_text(json.dumps(row(1, "JPEG", 2.0)) + "\n")
    (tmp_path / "rows.rank1.jsonl").write_text(
        json.dumps(row(2, "JPEG", 3.0)) + "\n" + json.dumps(row(0, "JPEG", 4.0)) + "\n" + '{"cut sh')
    before = latest_rows(tmp_path)
    merged = merge_row_shards(tmp_path)
    assert merged == tmp_path / "rows.jsonl" and sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    assert _rows(merged) == before
    assert {r["index"]: r["bpp"] for r in _rows(merged)} == {0: 4.0, 1: 2.0, 2: 3.0}
    assert merge_row_shards(tmp_path) == merged and _rows(merged) == before  # nothing to merge: unchanged
