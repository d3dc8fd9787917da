"""Killed at a chosen write point (SIGKILL, through tests/_die_at.py), then run again: the training run, the dataset
build and the evaluation end exactly as an uninterrupted run does, and nothing half-written is ever taken for done."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slim_diffusers import SLIMPipeline
from slim_diffusers.testing import tiny_pipeline

from .test_train import STAGE1, make_dataset, weights

REPO = Path(__file__).resolve().parents[2]
DIE_AT = str(REPO / "tests" / "_die_at.py")
TRAINED = ("compressor", "decompressor", "controlnet")
# a run of 4 steps with a checkpoint every 2, keeping one: the kills land in the second checkpoint or the final save
RUN = ["--resolution", "64", "--train_batch_size", "2", "--num_validation_images", "2", "--report_to", "none",
       "--seed", "3", "--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
       "--validation_steps", "0"]


def env(die_at=None, **extra):
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    out.pop("SLIM_DIE_AT", None)
    if die_at:
        out["SLIM_DIE_AT"] = die_at
    return out


def train(root, out, *extra, die_at=None):
    cmd = [sys.executable, DIE_AT, STAGE1, "--pretrained_model_name_or_path", str(root / "model"), "--train_data_dir",
           str(root / "data"), "--output_dir", str(out), *RUN, *extra]
    return subprocess.run(cmd, env=env(die_at), capture_output=True, text=True, timeout=600)


def assert_same_weights(a: Path, b: Path):
    for component in TRAINED:
        wa, wb = weights(a, component), weights(b, component)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{component}.{key} differs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    make_dataset().save_to_disk(str(root / "data"))
    tiny_pipeline(seed=0).save_pretrained(root / "model")
    reference = train(root, root / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root


# (write point, what is on disk right after the kill)
KILL_POINTS = {
    # the second checkpoint's model weights cut short, before the optimizer state is written
    "state cut short": ("safetensors.torch.save_file+half:2", "partial"),
    # checkpoint-4 in place, checkpoint-2 not yet pruned
    "while pruning": ("slim_diffusers.utils.file_utils.remove_tree:1:checkpoint-2", "both"),
    # the final pipeline half moved into the output folder (its UNet not yet there)
    "final save, components": ("slim_diffusers.utils.file_utils.replace_directory:1:/unet", "no pipeline"),
    # every component in place, model_index.json not yet
    "final save, model_index.json": ("os.replace:1:model_index.json", "no pipeline"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_at_any_write_resumes_to_the_weights_of_an_uninterrupted_run(setup, tmp_path, point):
    spec, after = KILL_POINTS[point]
    out = tmp_path / "run"
    killed = train(setup, out, die_at=spec)
    assert killed.returncode == -9 and "_die_at: killed" in killed.stderr, killed.stderr[-3000:]
    # whatever the kill left, no folder that loads as a pipeline and no checkpoint-N that is not complete
    assert not (out / "model_index.json").exists()
    assert all((d / "slim_checkpoint.json").is_file() for d in out.glob("checkpoint-*"))
    complete = sorted(d.name for d in out.glob("checkpoint-*"))
    assert complete == {"partial": ["checkpoint-2"], "both": ["checkpoint-2", "checkpoint-4"],
                        "no pipeline": ["checkpoint-4"]}[after]
    if after == "partial":
        assert (out / ".checkpoint-4.partial").is_dir()
    if after == "no pipeline":
        with pytest.raises(Exception, match="model_index.json"):
            SLIMPipeline.from_pretrained(out)

    resumed = train(setup, out, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = {"partial": 2, "both": 4, "no pipeline": 4}[after]
    assert f"resumed from {out / f'checkpoint-{start}'} at step {start}" in resumed.stderr
    if after == "partial":  # named in one line, and kept for inspection
        assert "skipping incomplete checkpoints" in resumed.stderr and ".checkpoint-4.partial" in resumed.stderr
    assert json.loads((out / "training_state.json").read_text())["global_step"] == 4
    assert_same_weights(setup / "reference", out)
    # (a kill before the pruning leaves one checkpoint too many until the next save prunes)
    assert sorted(d.name for d in out.glob("checkpoint-*"))[-1:] == ["checkpoint-4"]
    assert not [p.name for p in out.iterdir() if ".slim-staging-" in p.name or ".deleting-" in p.name]
    SLIMPipeline.from_pretrained(out)


def test_incomplete_checkpoints_are_called_incomplete_skipped_and_removed_on_request(tmp_path, caplog):
    from slim_diffusers.training.training_utils import (
        CHECKPOINT_FORMAT,
        CHECKPOINT_MARKER,
        CheckpointVersionError,
        IncompleteCheckpointError,
        resolve_checkpoint,
    )

    def checkpoint(step, files, marker=True, sizes=None):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        for name in files:
            (d / name).write_bytes(b"12345678")
        if marker:
            listed = {name: (sizes or {}).get(name, 8) for name in files}
            (d / CHECKPOINT_MARKER).write_text(json.dumps({"checkpoint_format": CHECKPOINT_FORMAT, "files": listed}))
        return d

    checkpoint(2, ["model.safetensors", "optimizer.bin"])
    checkpoint(4, ["model.safetensors"], marker=False)  # a write killed before the marker (the layout before this fix)
    checkpoint(6, ["model.safetensors", "optimizer.bin"], sizes={"optimizer.bin": 16})  # a file cut short
    with caplog.at_level("WARNING"):
        assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-2"
    assert "checkpoint-4, checkpoint-6" in caplog.text and "incomplete" in caplog.text
    with pytest.raises(IncompleteCheckpointError, match="interrupted"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-4"))
    assert resolve_checkpoint(tmp_path, "latest", remove_incomplete=True) == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]

    # slim-diffusers 0.1.0's layout (one Accelerate model per component, no marker) is still named by its version
    old = checkpoint(8, ["model.safetensors", "model_1.safetensors", "model_2.safetensors", "optimizer.bin"], marker=False)
    with pytest.raises(CheckpointVersionError, match="0.1.0"):
        resolve_checkpoint(tmp_path, "latest")
    with pytest.raises(CheckpointVersionError, match="0.1.0"):
        resolve_checkpoint(tmp_path, str(old))


def test_two_processes_killed_during_a_save_resume_to_the_weights_of_an_uninterrupted_run(setup, tmp_path):
    # the main process dies just before it renames the second checkpoint into place; the launcher stops the other
    def launch(out, *extra, die_at=None):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29541",
               DIE_AT, STAGE1, "--pretrained_model_name_or_path", str(setup / "model"), "--train_data_dir",
               str(setup / "data"), "--output_dir", str(out), *RUN, *extra]
        return subprocess.run(cmd, env=env(die_at, CUDA_VISIBLE_DEVICES="", SLIM_DIE_RANK="0"), capture_output=True,
                              text=True, timeout=600)

    reference = launch(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "run"
    killed = launch(out, die_at="slim_diffusers.utils.file_utils.replace_directory:1:checkpoint-4")
    assert killed.returncode != 0 and "_die_at: killed" in killed.stderr, killed.stderr[-3000:]
    assert sorted(d.name for d in out.glob("checkpoint-*")) == ["checkpoint-2"]
    partial = out / ".checkpoint-4.partial"
    assert {p.name for p in partial.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    resumed = launch(out, "--resume_from_checkpoint", "latest", "--remove_incomplete_checkpoints")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed incomplete checkpoints" in resumed.stderr and not partial.exists()
    assert_same_weights(tmp_path / "reference", out)


# ----------------------------------------------------------------------------------------------- saved pipelines
SAVE_TWICE = r"""
import sys
from slim_diffusers.testing import tiny_pipeline
tiny_pipeline(seed=int(sys.argv[2])).save_pretrained(sys.argv[1])
"""


def test_a_save_pretrained_killed_midway_never_leaves_a_folder_that_half_loads(tmp_path):
    spec = "slim_diffusers.utils.file_utils.replace_directory:2"  # the second component moved in: a mix, if it loaded
    out = tmp_path / "pipe"
    script = tmp_path / "save.py"
    script.write_text(SAVE_TWICE)
    tiny_pipeline(seed=0).save_pretrained(out)  # an earlier pipeline in the folder (saved here: only kills need a child)
    # killed while replacing it with another pipeline: the folder does not load (rather than loading a mix)
    killed = subprocess.run([sys.executable, DIE_AT, str(script), str(out), "1"], env=env(spec), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (out / "model_index.json").exists()
    # a new folder killed during its save does not exist at all
    fresh = tmp_path / "fresh"
    killed = subprocess.run([sys.executable, DIE_AT, str(script), str(fresh), "1"],
                            env=env("slim_diffusers.utils.file_utils.fsync_tree:1"), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9 and not fresh.exists()
    # saved again, it loads, and the staging folders are gone
    expected = tiny_pipeline(seed=1)
    expected.save_pretrained(out)
    loaded = SLIMPipeline.from_pretrained(out)
    for name in ("compressor", "controlnet"):
        a, b = getattr(expected, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.rglob(".pipe.slim-staging-*"))
