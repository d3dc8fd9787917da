"""benchmarks/toy/part2_carry.py keeps what toy world v3's baseline runs need to go on in the repository (curves,
stopped models, the states of runs still training) and puts it back on a new machine."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "toy"))

import part2_carry  # noqa: E402


def write_run(folder: Path, steps, stop=False, state_step=None, model=False):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"step": s, "top1": 10.0 + i, "verdict": {"stop": stop and i == len(steps) - 1}}
             for i, s in enumerate(steps)]
    (folder / "curve.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if state_step is not None:
        (folder / "state" / "optimizer").mkdir(parents=True)
        (folder / "state" / "state.json").write_text(json.dumps({"step": state_step}))
        (folder / "state" / "model.safetensors").write_bytes(b"weights %d" % state_step)
        (folder / "state" / "optimizer" / "optimizer.safetensors").write_bytes(b"moments %d" % state_step)
    if model:
        (folder / "model").mkdir()
        (folder / "model" / "model.safetensors").write_bytes(b"final")


@pytest.fixture
def world(tmp_path):
    out, results, models = tmp_path / "outputs", tmp_path / "results", tmp_path / "models"
    write_run(out / "mse" / "lambda=0.001", [1000, 2000], stop=True, state_step=2000, model=True)
    write_run(out / "mse" / "lambda=0.01", [1000], state_step=2000)  # trained a segment past its last measurement
    write_run(out / "task" / "lambda=0.001", [250], state_step=250)
    return out, results, models


def test_save_then_restore_on_a_new_machine(world, tmp_path):
    out, results, models = world
    said = part2_carry.save(out, results, models)
    assert len(said) == 3
    # every curve committed; the stopped run's model, the others' states (weights and optimizers)
    for kind, label in (("mse", "lambda=0.001"), ("mse", "lambda=0.01"), ("task", "lambda=0.001")):
        assert (results / kind / label / "curve.jsonl").read_text() == (out / kind / label / "curve.jsonl").read_text()
    assert (models / "mse" / "lambda=0.001" / "model" / "model.safetensors").read_bytes() == b"final"
    assert not (models / "carry" / "mse" / "lambda=0.001").exists()
    carried = models / "carry" / "mse" / "lambda=0.01" / "state"
    assert json.loads((carried / "state.json").read_text())["step"] == 2000
    assert (carried / "optimizer" / "optimizer.safetensors").read_bytes() == b"moments 2000"
    assert part2_carry.save(out, results, models) == said  # again: the same files, nothing new

    fresh = tmp_path / "new-machine"
    said = part2_carry.restore(fresh, results, models)
    assert any("resumes from step 2000" in s for s in said)
    stopped = fresh / "mse" / "lambda=0.001"
    # the stopped MSE run's model is also its state: where its task run starts
    assert (stopped / "model" / "model.safetensors").read_bytes() == b"final"
    assert (stopped / "state" / "model.safetensors").read_bytes() == b"final"
    running = fresh / "mse" / "lambda=0.01"
    assert (running / "state" / "model.safetensors").read_bytes() == b"weights 2000"
    assert (running / "curve.jsonl").read_text() == (out / "mse" / "lambda=0.01" / "curve.jsonl").read_text()
    # nothing already there is overwritten
    (running / "state" / "model.safetensors").write_bytes(b"newer")
    assert any("left as it is" in s for s in part2_carry.restore(fresh, results, models))
    assert (running / "state" / "model.safetensors").read_bytes() == b"newer"


def test_a_carried_state_goes_once_its_run_stops(world):
    out, results, models = world
    part2_carry.save(out, results, models)
    folder = out / "mse" / "lambda=0.01"
    write_run(folder.parent / "tmp", [1000, 2000], stop=True)
    (folder / "curve.jsonl").write_text((folder.parent / "tmp" / "curve.jsonl").read_text())
    (folder / "model").mkdir()
    (folder / "model" / "model.safetensors").write_bytes(b"final 0.01")
    part2_carry.save(out, results, models)
    assert not (models / "carry" / "mse" / "lambda=0.01").exists()
    assert (models / "mse" / "lambda=0.01" / "model" / "model.safetensors").read_bytes() == b"final 0.01"


def test_a_state_that_does_not_belong_to_its_curve_is_not_carried(world):
    out, results, models = world
    state = out / "task" / "lambda=0.001" / "state" / "state.json"
    state.write_text(json.dumps({"step": 5000}))  # neither the curve's last step nor one segment after it
    with pytest.raises(RuntimeError, match="no consistent state"):
        part2_carry.save(out, results, models, attempts=2)


def test_a_run_with_neither_model_nor_state_is_not_restored(world, tmp_path):
    out, results, models = world
    part2_carry.save(out, results, models)
    import shutil

    shutil.rmtree(models / "carry" / "task")
    fresh = tmp_path / "new-machine"
    said = part2_carry.restore(fresh, results, models)
    assert any("task lambda=0.001: neither" in s for s in said)
    assert not (fresh / "task" / "lambda=0.001").exists()


def write_eval(work: Path, rows: str):
    (work / "eval").mkdir(parents=True)
    (work / "eval" / "rows.jsonl").write_text(rows)
    (work / "eval" / "bitstreams").mkdir()
    (work / "eval" / "bitstreams" / "0.slim").write_bytes(b"bytes")
    clf = work / "foundation" / "resnet_b"
    clf.mkdir(parents=True)
    (clf / "model.safetensors").write_bytes(b"resnet b")
    (clf / "toy_done.json").write_text("{}")
    data = work / "data" / "test-3"
    data.mkdir(parents=True)
    (data / "dataset_info.json").write_text("{}")
    (data / "data-00000-of-00001.arrow").write_bytes(b"images")
    half = work / "data" / "test-9"  # written when the kill came: not carried
    half.mkdir()
    (work / "bits-test-3.json").write_text('{"roi": []}')


def test_the_test_evaluation_is_carried_without_its_cut_line(tmp_path):
    out, models = tmp_path / "outputs", tmp_path / "models"
    work = out / part2_carry.EVAL
    write_eval(work, '{"codec": "SLIM", "index": 0}\n{"codec": "SLIM", "index": 1}\n{"codec": "SL')
    said = part2_carry.save_eval(out, models)
    assert "eval-test: 2 finished rows carried" in said
    carry = models / "carry" / part2_carry.EVAL
    kept = (carry / "eval" / "rows.jsonl.gz").read_bytes()
    assert part2_carry.save_eval(out, models) == said and (carry / "eval" / "rows.jsonl.gz").read_bytes() == kept
    assert not (carry / "eval" / "bitstreams").exists()
    # the images are not carried, their files' digest is (the half-written folder has none)
    assert sorted(p.name for p in (carry / "data").iterdir()) == ["test-3.sha256.json"]

    fresh = tmp_path / "new-machine"
    said = part2_carry.restore_eval(fresh, models)
    new = fresh / part2_carry.EVAL
    assert (new / "eval" / "rows.jsonl").read_text() == '{"codec": "SLIM", "index": 0}\n{"codec": "SLIM", "index": 1}\n'
    assert (new / "foundation" / "resnet_b" / "model.safetensors").read_bytes() == b"resnet b"
    assert (new / "bits-test-3.json").read_text() == '{"roi": []}'
    assert not (new / "data" / "test-3").exists()
    # the images drawn again there are checked against the digest
    (new / "data" / "test-3").mkdir()
    (new / "data" / "test-3" / "dataset_info.json").write_text("{}")
    (new / "data" / "test-3" / "data-00000-of-00001.arrow").write_bytes(b"images")
    part2_carry.check_digest(new / "data" / "test-3")
    (new / "data" / "test-3" / "data-00000-of-00001.arrow").write_bytes(b"other images")
    with pytest.raises(part2_carry.DataMismatchError, match="data-00000-of-00001.arrow"):
        part2_carry.check_digest(new / "data" / "test-3")
    # the evaluation went on there; a second restore leaves its newer rows alone
    (new / "eval" / "rows.jsonl").write_text("newer\n")
    assert any("left as it is" in s for s in part2_carry.restore_eval(fresh, models))
    assert (new / "eval" / "rows.jsonl").read_text() == "newer\n"


def test_the_evaluation_refuses_images_that_are_not_the_ones_it_measured(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks" / "toy"))
    import evaluate_v3

    folder = evaluate_v3.ensure_data(tmp_path, "validation", 3)
    digest = folder.with_name(folder.name + part2_carry.DIGEST)
    assert set(json.loads(digest.read_text())) >= {"dataset_info.json"}
    assert evaluate_v3.ensure_data(tmp_path, "validation", 3) == folder  # the same images: accepted
    kept = json.loads(digest.read_text())
    kept[next(k for k in kept if k.endswith(".arrow"))] = "0" * 64
    digest.write_text(json.dumps(kept))
    with pytest.raises(part2_carry.DataMismatchError):
        evaluate_v3.ensure_data(tmp_path, "validation", 3)


def test_no_evaluation_nothing_carried(tmp_path):
    assert part2_carry.save_eval(tmp_path / "outputs", tmp_path / "models") == []
    assert part2_carry.restore_eval(tmp_path / "outputs", tmp_path / "models") == []
