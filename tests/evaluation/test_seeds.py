"""Decoding-seed spread: `slim evaluate --seeds`, the harness's per-seed rows, and the interval over seeds and images."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from slim_diffusers import SLIMPipeline
from slim_diffusers.cli import main
from slim_diffusers.evaluation.codecs import SLIMCodec
from slim_diffusers.evaluation.errors import EvaluationSetupError
from slim_diffusers.evaluation.harness import Classifier, Evaluation, Sample, latest_rows
from slim_diffusers.evaluation.report import seed_interval, summarize
from slim_diffusers.evaluation.statistics import bootstrap_bd, summarize_with_intervals


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_evaluate_with_two_seeds_writes_a_row_per_seed_and_an_interval(
    eval_model_dir, eval_classifier_dir, eval_dataset_dir, tmp_path, capsys
):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(eval_model_dir), "--dataset", str(eval_dataset_dir), "--classifiers",
            str(eval_classifier_dir), "--num_samples", "3", "--baselines", "jpeg", "--qualities", "20", "--steps", "2",
            "--seeds", "0", "1", "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "process 0: 9 rows written" in printed  # SLIM: 3 images × 2 seeds; JPEG: 3 images, decoded once
    rows = _rows(out / "rows.jsonl")
    slim = [r for r in rows if r["codec"] == "SLIM"]
    assert sorted((r["index"], r["seed"]) for r in slim) == [(i, s) for i in range(3) for s in (0, 1)]
    assert all("seed" not in r for r in rows if r["codec"] == "JPEG")  # deterministic: no seed to keep
    for i in range(3):  # one file per image, decoded under both seeds
        a, b = [r for r in slim if r["index"] == i]
        assert (a["file"], a["bytes"]) == (b["file"], b["bytes"]) and (out / a["file"]).is_file()
        assert a["encode_seconds"] > 0 and b["encode_seconds"] == 0.0  # encoded once, counted once

    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    (point,) = summary["codecs"]["SLIM"].values()
    clf = str(eval_classifier_dir)
    assert point["images"] == 3 and point["seeds"] == [0, 1]
    low, high = point["top1_seed_ci"][clf]
    assert low <= point["top1"][clf] <= high
    per_seed = point["top1_per_seed"][clf]
    assert set(per_seed) == {"0", "1"} and point["top1"][clf] == pytest.approx(np.mean(list(per_seed.values())))
    expected = np.mean([np.mean([r["top5"][clf][0] == r["label"] for r in slim if r["index"] == i]) for i in range(3)])
    assert point["top1"][clf] == pytest.approx(100 * expected)
    assert "seeds" not in summary["codecs"]["JPEG"]["20"]
    assert f"[{low:.1f}, {high:.1f}] over 2 seeds" in printed

    assert main(args) == 0  # resumed: everything is there
    assert "0 rows written, 9 found finished" in capsys.readouterr().out


def test_rows_without_a_seed_count_as_seed_0_and_each_seed_decodes_as_alone(
    eval_model_dir, eval_classifier_dir, eval_dataset_dir, tmp_path
):
    pipe = SLIMPipeline.from_pretrained(eval_model_dir)
    pipe.set_progress_bar_config(disable=True)
    codec = SLIMCodec({"m": pipe}, num_inference_steps=2)
    classifier = Classifier.from_pretrained(str(eval_classifier_dir))
    ds = datasets.load_from_disk(str(eval_dataset_dir))
    samples = [Sample(i, ds[i]["image"], ds[i]["label"], ds[i]["caption"]) for i in range(2)]

    assert Evaluation(tmp_path, [codec], [classifier]).run(samples) == 2  # no seeds: the codec's own, recorded
    rows = _rows(tmp_path / "rows.jsonl")
    assert [r["seed"] for r in rows] == [0, 0]
    # rows of a run from before seeds were recorded
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "seed"}) + "\n"
                                                 for r in rows))
    old = summarize(latest_rows(tmp_path), [classifier.name])
    assert "seeds" not in old["SLIM"]["m"] and old["SLIM"]["m"]["images"] == 2
    resumed = Evaluation(tmp_path, [codec], [classifier], seeds=[0, 3])
    assert resumed.run(samples) == 2  # only seed 3 is new
    merged = latest_rows(tmp_path, resumed.keys(range(2)))
    assert len(merged) == 4 and sorted(r.get("seed", 0) for r in merged) == [0, 0, 3, 3]

    data = (tmp_path / merged[0]["file"]).read_bytes()
    seeded = np.asarray(codec.decode(data, "m", seed=3))
    assert np.array_equal(seeded, np.asarray(SLIMCodec({"m": pipe}, num_inference_steps=2, seed=3).decode(data, "m")))
    assert not np.array_equal(seeded, np.asarray(codec.decode(data, "m")))  # another seed, another sample

    with pytest.raises(EvaluationSetupError, match="twice"):
        Evaluation(tmp_path, [codec], [classifier], seeds=[1, 1])
    with pytest.raises(EvaluationSetupError, match="whole numbers"):
        Evaluation(tmp_path, [codec], [classifier], seeds=[])


def _synthetic_rows(correct_by_seed):
    """Rows of one SLIM rate point and one JPEG point: ``correct_by_seed[seed][image]`` says whether SLIM was right."""
    rows = []
    for seed, correct in correct_by_seed.items():
        for i, ok in enumerate(correct):
            rows.append({"codec": "SLIM", "rate_point": "a", "index": i, "seed": seed, "bpp": 0.1, "bytes": 10,
                         "label": 1, "top5": {"c": [1 if ok else 2, 3, 4, 5, 6]}, "encode_seconds": 0.0,
                         "decode_seconds": 0.0})
    for i in range(len(next(iter(correct_by_seed.values())))):
        for point, bpp in (("q1", 0.05), ("q2", 0.2)):
            rows.append({"codec": "JPEG", "rate_point": point, "index": i, "bpp": bpp, "bytes": 5, "label": 1,
                         "top5": {"c": [1, 2, 3, 4, 5]}, "encode_seconds": 0.0, "decode_seconds": 0.0})
    return rows


def test_the_interval_is_a_bootstrap_over_images_of_their_seed_means():
    assert seed_interval(np.ones(20)) == [100.0, 100.0]
    per_image = np.array([1, 1, 0.5, 0, 1, 0.5, 1, 0, 1, 1])
    low, high = seed_interval(per_image)
    assert low < 100 * per_image.mean() < high and seed_interval(per_image) == [low, high]  # deterministic
    # seeds that disagree widen nothing by themselves when every image's seed mean is the same
    same_mean = summarize(_synthetic_rows({0: [1, 0] * 5, 1: [0, 1] * 5}), ["c"])["SLIM"]["a"]
    assert same_mean["top1"]["c"] == 50.0 and same_mean["top1_per_seed"]["c"] == {"0": 50.0, "1": 50.0}
    assert same_mean["top1_seed_ci"]["c"] == [50.0, 50.0]
    spread = summarize(_synthetic_rows({0: [1] * 5 + [0] * 5, 1: [1] * 5 + [0] * 5}), ["c"])["SLIM"]["a"]
    assert spread["top1_seed_ci"]["c"][0] < 50.0 < spread["top1_seed_ci"]["c"][1]
    # the statistics module's intervals and paired bootstrap take rows with several seeds per image
    rows = _synthetic_rows({0: [1] * 8 + [0] * 2, 1: [1] * 6 + [0] * 4})
    with_ci = summarize_with_intervals(rows, ["c"])["SLIM"]["a"]
    assert with_ci["top1"]["c"] == 70.0 and with_ci["top1_ci"]["c"] == with_ci["top1_seed_ci"]["c"]
    assert with_ci["images"] == 10
    bootstrap_bd(rows, ["c"], anchor="JPEG", replicates=20)  # pairs images, not decodes
