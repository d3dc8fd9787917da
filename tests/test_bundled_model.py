"""The bundled toy model by name from Python, and a model that is not there named in one sentence."""

import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import constants

import slim_diffusers
from slim_diffusers import SLIMModelNotFoundError, SLIMPipeline
from slim_diffusers.evaluation.errors import EvaluationSetupError
from slim_diffusers.evaluation.run import build_codecs
from slim_diffusers.utils.hub import missing_model_reason


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_toy_names_the_bundled_model_as_on_the_command_line():
    from slim_diffusers.cli import _resolve_model

    path = slim_diffusers.toy_model_path()
    assert (path / "model_index.json").is_file()
    assert _resolve_model("toy").location == str(path)
    demo = json.loads((path.parent / "demo.json").read_text())["decode"]
    assert slim_diffusers.toy_decode_settings() == {k: demo[k] for k in ("num_inference_steps", "strength")}
    assert _resolve_model("toy").decode == slim_diffusers.toy_decode_settings()

    pipe = SLIMPipeline.from_pretrained("toy")
    by_path = SLIMPipeline.from_pretrained(path)
    assert pipe.decompressor.fingerprint() == by_path.decompressor.fingerprint()
    assert pipe.num_rate_levels == len(json.loads((path.parent / "demo.json").read_text())["rate_levels"])


def test_a_local_folder_called_toy_is_dot_slash_toy(tmp_path, monkeypatch):
    (tmp_path / "toy").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SLIMModelNotFoundError, match=r"\./toy: the folder has no model_index.json"):
        SLIMPipeline.from_pretrained("./toy")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("org/slim", "org/slim: no such folder, and HF_HUB_OFFLINE is set and the Hugging Face cache does not hold it"),
        ("slim-lr1", "slim-lr1: no such folder, and HF_HUB_OFFLINE is set"),
        ("./missing/slim", r"\./missing/slim: no such folder; pass a folder written by SLIMPipeline.save_pretrained"),
        ("slim_diffusers/assets/toy", "the folder has no model_index.json"),
    ],
)
def test_a_model_that_is_not_there_is_one_named_sentence(offline, name, expected, monkeypatch):
    monkeypatch.chdir(slim_diffusers.toy_model_path().parents[3])  # the checkout: slim_diffusers/assets/toy exists
    with pytest.raises(SLIMModelNotFoundError, match=expected) as info:
        SLIMPipeline.from_pretrained(name)
    message = str(info.value)
    assert "\n" not in message and "'toy'" in message and "toy_model_path()" in message
    assert isinstance(info.value, OSError)  # code catching diffusers' OSError catches it too


def test_a_cached_hub_model_is_there_offline(offline, tmp_path):
    # the layout huggingface_hub's cache gives a downloaded repository
    repo = tmp_path / "models--org--slim"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "model_index.json").write_text("{}")
    assert missing_model_reason("org/slim", cache_dir=tmp_path) is None
    assert "cache does not hold it" in missing_model_reason("org/other", cache_dir=tmp_path)


def test_offline_from_pretrained_of_a_hub_id_is_a_short_traceback(tmp_path):
    # a 50–93-line chain of diffusers' and huggingface_hub's tracebacks before; now the one raise
    code = "from slim_diffusers import SLIMPipeline; SLIMPipeline.from_pretrained('org/slim')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 1
    traceback = result.stderr[result.stderr.index("Traceback"):].strip().splitlines()
    assert len(traceback) <= 12, result.stderr
    assert traceback[-1].startswith("slim_diffusers.errors.SLIMModelNotFoundError: org/slim: no such folder")
    assert "During handling" not in result.stderr


def test_evaluation_names_the_model_it_cannot_load_not_rates(offline):
    with pytest.raises(EvaluationSetupError) as info:
        build_codecs(models=["slim-lr1"])
    assert str(info.value).startswith("slim-lr1: no such folder") and "--rates" not in str(info.value)
    assert "stacktrace" not in str(info.value)
