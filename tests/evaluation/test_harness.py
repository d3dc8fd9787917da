import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from slim_diffusers import SLIMBitstream, SLIMPipeline
from slim_diffusers.cli import main
from slim_diffusers.evaluation.baselines import PillowCodec
from slim_diffusers.evaluation.codecs import SLIMCodec
from slim_diffusers.evaluation.errors import EvaluationSetupError, RowsFileError
from slim_diffusers.evaluation.harness import Classifier, Evaluation, Sample, latest_rows

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _samples(dataset_dir, indices):
    ds = datasets.load_from_disk(str(dataset_dir))
    return [Sample(i, ds[i]["image"], ds[i]["label"], ds[i]["caption"]) for i in indices]


class CountingCodec:
    """A plug-in codec in its simplest form (the documented interface, nothing inherited): JPEG, counted."""

    def __init__(self, name="JPEG q", qualities=(10, 60)):
        self.inner = PillowCodec("JPEG", qualities=qualities)
        self.name, self.suffix, self.encoded = name, ".jpg", 0

    @property
    def rate_points(self):
        return self.inner.rate_points

    def encode(self, image, rate_point, caption=None):
        self.encoded += 1
        return self.inner.encode(image, rate_point)

    def decode(self, data, rate_point):
        return self.inner.decode(data, rate_point)


class PngCodec:
    """Lossless PNG, one rate point: what a user's plug-in module might hold."""

    name, suffix, rate_points = "PNG", ".png", [0]

    def encode(self, image, rate_point, caption=None):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def decode(self, data, rate_point):
        return PIL.Image.open(io.BytesIO(data)).convert("RGB")


def lossless_png():
    """Factory for ``--codec tests.evaluation.test_harness:lossless_png``."""
    return PngCodec()


def test_evaluate_rows_and_summary_agree_with_the_files_written(
    eval_model_dir, eval_classifier_dir, eval_dataset_dir, tmp_path, capsys
):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(eval_model_dir), "--dataset", str(eval_dataset_dir),
            "--classifiers", str(eval_classifier_dir), "--num_samples", "3", "--baselines", "jpeg", "webp",
            "--qualities", "5", "30", "90", "--no-diffusion-curve", "--steps", "2", "-o", str(out)]
    assert main(args) == 0
    assert "process 0: 24 rows written, 0 found finished" in capsys.readouterr().out
    ds = datasets.load_from_disk(str(eval_dataset_dir))
    clf = str(eval_classifier_dir)

    rows = _rows(out / "rows.jsonl")
    assert len(rows) == 3 * (1 + 1 + 3 + 3)  # images × (SLIM, SLIM w/o diffusion, 3 JPEG, 3 WebP)
    for row in rows:
        image = ds[row["index"]]["image"]
        size = os.path.getsize(out / row["file"])  # bpp recomputed from the file on disk
        assert row["bytes"] == size
        assert row["bpp"] == pytest.approx(8 * size / (image.width * image.height), rel=1e-12)
        assert row["label"] == ds[row["index"]]["label"]
        assert len(set(row["top5"][clf])) == 5
    slim = {r["index"]: r for r in rows if r["codec"] == "SLIM"}
    ablation = {r["index"]: r for r in rows if r["codec"] == "SLIM w/o diffusion"}
    for i, row in slim.items():
        # the sender is the same, only the decoder differs; the dataset's caption travelled in the file
        assert (out / row["file"]).read_bytes() == (out / ablation[i]["file"]).read_bytes()
        assert SLIMBitstream.load(out / row["file"]).caption == ds[i]["caption"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["complete"] and summary["anchor"] == "JPEG" and summary["seconds"] > 0
    for codec, points in summary["codecs"].items():
        for point, entry in points.items():
            mine = [r for r in rows if r["codec"] == codec and r["rate_point"] == point]
            assert entry["images"] == len(mine) == 3
            recomputed = [8 * os.path.getsize(out / r["file"]) / (r["width"] * r["height"]) for r in mine]
            assert entry["mean_bpp"] == pytest.approx(np.mean(recomputed), rel=1e-12)
            assert entry["top1"][clf] == pytest.approx(100 * np.mean([r["top5"][clf][0] == r["label"] for r in mine]))
            assert entry["top5"][clf] == pytest.approx(100 * np.mean([r["label"] in r["top5"][clf] for r in mine]))
    for codec in ("JPEG", "WebP"):
        bpp = [summary["codecs"][codec][q]["mean_bpp"] for q in ("5", "30", "90")]
        assert bpp[0] < bpp[1] < bpp[2], (codec, bpp)
    assert PIL.Image.open(out / "rate_accuracy.png").size[0] > 300
    table = (out / "bd_rate.md").read_text()
    assert table.startswith("# BD-rate against JPEG") and "| WebP |" in table and "| SLIM |" in table

    # the rows classify the reconstruction: decoding the file again gives the same top-5 (seeded sampling)
    pipe = SLIMPipeline.from_pretrained(eval_model_dir)
    pipe.set_progress_bar_config(disable=True)
    codec = SLIMCodec({"slim_model": pipe}, num_inference_steps=2)
    classifier = Classifier.from_pretrained(eval_classifier_dir)
    row = slim[2]
    assert row["rate_point"] == Path(eval_model_dir).name
    decoded = codec.decode((out / row["file"]).read_bytes(), "slim_model")
    assert classifier.top5(decoded) == row["top5"][clf]
    # every image gets its own seeded generator: decoding twice in a row gives the same pixels
    again = codec.decode((out / row["file"]).read_bytes(), "slim_model")
    assert np.array_equal(np.asarray(decoded), np.asarray(again))

    # a second call finds every row done and only rewrites the report
    assert main(args) == 0
    assert "process 0: 0 rows written, 24 found finished" in capsys.readouterr().out
    assert len(_rows(out / "rows.jsonl")) == 24


def test_resume_skips_finished_rows_and_redoes_a_cut_line(eval_classifier_dir, eval_dataset_dir, tmp_path):
    classifier = Classifier.from_pretrained(eval_classifier_dir)
    samples = _samples(eval_dataset_dir, range(3))
    codec = CountingCodec()
    assert Evaluation(tmp_path, [codec], [classifier]).run(samples) == 6
    complete = (tmp_path / "rows.jsonl").read_text().splitlines(keepends=True)

    # killed while writing the fourth row: three rows and half a line on disk
    (tmp_path / "rows.jsonl").write_text("".join(complete[:3]) + complete[3][:40])
    resumed = CountingCodec()
    assert Evaluation(tmp_path, [resumed], [classifier]).run(samples) == 3
    assert resumed.encoded == 3
    rows = _rows(tmp_path / "rows.jsonl")
    assert [(r["index"], r["rate_point"]) for r in rows] == [(i, q) for i in range(3) for q in ("10", "60")]
    for before, after in zip(map(json.loads, complete), rows):
        assert (before["bytes"], before["top5"]) == (after["bytes"], after["top5"])

    # a row is finished only for the classifiers it was made with: adding one redoes them all
    second = Classifier("second", classifier.model, classifier.processor)
    again = CountingCodec()
    assert Evaluation(tmp_path, [again], [classifier, second]).run(samples) == 6
    merged = latest_rows(tmp_path)
    assert len(merged) == 6 and all(set(r["top5"]) == {classifier.name, "second"} for r in merged)

    # damage anywhere but the last line is not silently skipped
    lines = (tmp_path / "rows.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "rows.jsonl").write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.raises(RowsFileError, match="line 2"):
        Evaluation(tmp_path, [CountingCodec()], [classifier])


def test_shards_see_each_others_rows(eval_classifier_dir, eval_dataset_dir, tmp_path):
    classifier = Classifier.from_pretrained(eval_classifier_dir)
    samples = _samples(eval_dataset_dir, range(4))
    first = Evaluation(tmp_path, [CountingCodec()], [classifier], shard=".rank0")
    second = Evaluation(tmp_path, [CountingCodec()], [classifier], shard=".rank1")
    assert first.run(samples[:3]) == 6 and second.run(samples[3:]) == 2
    # resumed with one process: it finds every row of both shards
    single = Evaluation(tmp_path, [CountingCodec()], [classifier])
    assert single.run(samples) == 0
    keys = single.keys(range(4))
    assert [(r["codec"], r["rate_point"], r["index"], 0) for r in latest_rows(tmp_path, keys)] == keys  # seed 0: JPEG draws no noise

    # without keeping the files the rate is still measured on disk, then the file goes
    lean = Evaluation(tmp_path / "lean", [CountingCodec()], [classifier], keep_bitstreams=False)
    assert lean.run(samples[:1]) == 2
    for row in _rows(tmp_path / "lean" / "rows.jsonl"):
        assert row["bytes"] > 100 and not (tmp_path / "lean" / row["file"]).exists()


def test_plugged_in_codec_and_setup_errors(eval_classifier_dir, eval_dataset_dir, tmp_path, capsys):
    base = ["evaluate", "--dataset", str(eval_dataset_dir), "--classifiers", str(eval_classifier_dir),
            "--num_samples", "2"]
    out = tmp_path / "png"
    assert main([*base, "--baselines", "--codec", "tests.evaluation.test_harness:lossless_png", "-o", str(out)]) == 0
    rows = _rows(out / "rows.jsonl")
    assert [r["file"] for r in rows] == ["bitstreams/PNG/0/0.png", "bitstreams/PNG/0/1.png"]
    assert json.loads((out / "summary.json").read_text())["anchor"] == "PNG"
    capsys.readouterr()

    assert main([*base, "--anchor", "AVIF", "-o", str(tmp_path / "x")]) == 2
    assert "anchor codec 'AVIF' is not evaluated" in capsys.readouterr().err
    from slim_diffusers import toy_world
    from slim_diffusers.testing import tiny_classifier

    five = tmp_path / "five_classes"
    model, processor = tiny_classifier(num_labels=5)
    model.save_pretrained(five), processor.save_pretrained(five)
    assert main([*base, "--classifiers", str(five), "-o", str(tmp_path / "y")]) == 2
    assert f"{len(toy_world.CLASS_NAMES)} classes but" in capsys.readouterr().err
    assert not (tmp_path / "y" / "rows.jsonl").exists()  # refused before any work

    classifier = Classifier.from_pretrained(eval_classifier_dir)
    with pytest.raises(EvaluationSetupError, match="clash"):
        Evaluation(tmp_path / "z", [CountingCodec(), CountingCodec()], [classifier])
    with pytest.raises(EvaluationSetupError, match="codec interface"):
        Evaluation(tmp_path / "z", [object()], [classifier])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_with_a_process_that_has_no_work(eval_classifier_dir, eval_dataset_dir, tmp_path):
    out = tmp_path / "sharded"
    command = [
        # on a machine without CUDA, --multi_gpu starts gloo processes on the CPU (--cpu would start only one)
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "slim_diffusers.cli", "evaluate", "--dataset", str(eval_dataset_dir),
        "--classifiers", str(eval_classifier_dir), "--num_samples", "1", "--baselines", "jpeg",
        "--qualities", "10", "50", "-o", str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "process 0: 2 rows written" in result.stdout and "process 1: 0 rows written" in result.stdout
    assert len(_rows(out / "rows.jsonl")) == 2  # the main process merged the shards (one of them empty)
    assert not list(out.glob("rows.rank*.jsonl"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["codecs"]["JPEG"]["10"]["images"] == 1


def test_batched_evaluation_writes_the_bytes_of_one_at_a_time(eval_model_dir, eval_classifier_dir, eval_dataset_dir,
                                                              tmp_path):
    pipe = SLIMPipeline.from_pretrained(eval_model_dir)
    pipe.set_progress_bar_config(disable=True)
    codecs = [SLIMCodec({"m": pipe}, num_inference_steps=2, strength=0.5), PillowCodec("JPEG", qualities=[20])]
    classifier = Classifier.from_pretrained(str(eval_classifier_dir))
    samples = _samples(eval_dataset_dir, range(4))
    one = Evaluation(tmp_path / "one", codecs, [classifier])
    assert one.run(samples) == 8
    batched = Evaluation(tmp_path / "batched", codecs, [classifier])
    assert batched.run(samples, batch_size=3) == 8  # a batch of 3 and one of 1
    rows_one = {(r["codec"], r["index"]): r for r in _rows(one.rows_path)}
    rows_batched = {(r["codec"], r["index"]): r for r in _rows(batched.rows_path)}
    assert rows_one.keys() == rows_batched.keys()
    for key, row in rows_one.items():
        other = rows_batched[key]
        assert (row["bytes"], row["bpp"], row["label"]) == (other["bytes"], other["bpp"], other["label"])
        assert (tmp_path / "one" / row["file"]).read_bytes() == (tmp_path / "batched" / other["file"]).read_bytes()
        assert set(other["top5"]) == {classifier.name} and len(other["top5"][classifier.name]) == 5
    # the decoded images agree with decoding one at a time up to rounding in the batched convolutions
    data = (tmp_path / "one" / rows_one[("SLIM", 0)]["file"]).read_bytes()
    alone = np.asarray(codecs[0].decode(data, "m"), np.int16)
    together = np.asarray(codecs[0].decode_batch([data, data], "m")[0], np.int16)
    assert np.abs(alone - together).max() <= 2
    # resuming finds everything done
    assert Evaluation(tmp_path / "batched", codecs, [classifier]).run(samples, batch_size=3) == 0


@pytest.mark.parametrize("spec", [
    "slim_diffusers.utils.file_utils.write_atomically:3:bitstreams",  # the third file of the run
    "slim_diffusers.utils.file_utils.write_atomically:1:summary.json",  # every row written, the report not
])
def test_an_evaluation_killed_at_a_write_resumes_to_the_rows_of_an_uninterrupted_one(
    eval_classifier_dir, eval_dataset_dir, tmp_path, spec
):
    def evaluate(out, die_at=None):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        env.pop("SLIM_DIE_AT", None)
        if die_at:
            env["SLIM_DIE_AT"] = die_at
        command = [sys.executable, str(REPO_ROOT / "tests" / "_die_at.py"), "-m", "slim_diffusers.cli", "evaluate",
                   "--dataset", str(eval_dataset_dir), "--classifiers", str(eval_classifier_dir), "--num_samples", "3",
                   "--baselines", "jpeg", "--qualities", "10", "50", "-o", str(out)]
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)

    def measured(out):  # a row without its timings
        return sorted((r["codec"], r["rate_point"], r["index"], r["bytes"], json.dumps(r["top5"]))
                      for r in _rows(out / "rows.jsonl"))

    reference = evaluate(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "killed"
    killed = evaluate(out, spec)
    assert killed.returncode == -9 and "_die_at: killed" in killed.stderr, killed.stderr[-3000:]
    assert not (out / "summary.json").exists() and not list(out.rglob(".slim-*.tmp"))
    resumed = evaluate(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert measured(out) == measured(tmp_path / "reference")
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "reference"))
    def accuracy(codecs):
        return {(c, p): [e[k] for k in ("images", "mean_bpp", "mean_bytes", "top1", "top5")]
                for c, points in codecs.items() for p, e in points.items()}

    assert summary["complete"] and accuracy(summary["codecs"]) == accuracy(expected["codecs"])
