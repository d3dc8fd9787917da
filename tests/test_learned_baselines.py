"""The toy world's learned baselines (benchmarks/toy/learned_baselines.py) at smoke scale: what they write, that
the files alone give back the same bytes, that the harness codec round-trips, and that a second call trains
nothing. Their rate–accuracy numbers come from the full toy run, not from here."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from slim_diffusers import toy_world
from slim_diffusers.evaluation.codecs import Codec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "toy"))
import learned_baselines as lb  # noqa: E402

SIZE = 96  # not a multiple of 64: the padding path is exercised
DATA_SEED, TEST_SEED = 2, 3


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    from slim_diffusers.testing import tiny_classifier

    path = tmp_path_factory.mktemp("classifier")
    model, processor = tiny_classifier(num_labels=len(toy_world.CLASS_NAMES), image_size=SIZE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, classifier_dir):
    out = tmp_path_factory.mktemp("learned")
    result = lb.train_learned_codecs(out, classifier_dir, sample_fn=toy_world.samples, data_seed=DATA_SEED,
                                     image_size=SIZE, config=lb.SMOKE, log_every=0)
    return out, result


@pytest.fixture(scope="module")
def images():
    return [s.image for s in toy_world.samples(2, seed=TEST_SEED, size=SIZE)]


def _bytes(model, image) -> bytes:
    return lb.LearnedBaselines({"x": {0.0: model}}).codecs()[0].encode(image, lb.rate_point_label(0.0))


def test_every_model_is_written_as_safetensors_and_json(trained):
    from safetensors import safe_open

    out, result = trained
    # one model from scratch at the highest λ, the lower λ fine-tuned from it, a task model per λ
    assert lb.SMOKE.lambdas == (0.001, 0.1) and lb.SMOKE.base_lambda == 0.1
    assert result.trained == ["mse/base λ=0.1", "mse λ=0.001", "task λ=0.001", "task λ=0.1"]
    for stage in ("mse", "task"):
        for lam in lb.SMOKE.lambdas:
            path = out / stage / lb.rate_point_label(lam)
            assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "training.json"]
            config = json.loads((path / "config.json").read_text())
            assert (config["architecture"], config["N"], config["M"], config["lambda"], config["stage"]) == (
                lb.ARCHITECTURE, lb.SMOKE.N, lb.SMOKE.M, lam, stage)
            with safe_open(str(path / "model.safetensors"), "pt") as f:
                assert "entropy_bottleneck._quantized_cdf" in f.keys()  # the tables the bytes depend on
    assert not [p for p in out.rglob("*") if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".ckpt"}]


def test_reloaded_models_write_identical_bytes(trained, images):
    out, result = trained
    for stage, name in (("mse", lb.MSE_NAME), ("task", lb.TASK_NAME)):
        for lam, model in result.models[name].items():
            reloaded = lb.load_model(out / stage / lb.rate_point_label(lam))
            expected = [_bytes(model, im) for im in images]
            assert [_bytes(reloaded, im) for im in images] == expected
            reloaded.update(force=True)  # tables rebuilt from the weights are the stored ones
            assert [_bytes(reloaded, im) for im in images] == expected


def test_harness_codecs_round_trip_at_the_image_size(trained, images):
    _, result = trained
    codecs = result.codecs()
    assert [c.name for c in codecs] == [lb.MSE_NAME, lb.TASK_NAME]
    for codec in codecs:
        assert isinstance(codec, Codec)
        assert codec.rate_points == [lb.rate_point_label(lam) for lam in sorted(lb.SMOKE.lambdas)]
        for point in codec.rate_points:
            data = codec.encode(images[0], point)
            decoded = codec.decode(data, point)
            assert decoded.mode == "RGB" and decoded.size == (SIZE, SIZE)
            assert codec.encode(images[0], point) == data  # deterministic
            # decoding again from the bytes alone gives the same pixels
            assert np.array_equal(np.asarray(codec.decode(data, point)), np.asarray(decoded))


def test_rates_are_ordered_by_lambda(trained, images):
    _, result = trained
    for codec in result.codecs():
        sizes = [sum(len(codec.encode(im, p)) for im in images) for p in codec.rate_points]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1], (codec.name, sizes)


def test_a_second_call_reuses_the_cache_and_a_changed_setting_retrains_only_what_it_touches(
        trained, classifier_dir, images):
    out, first = trained
    again = lb.train_learned_codecs(out, classifier_dir, sample_fn=_no_sampling, data_seed=DATA_SEED,
                                    image_size=SIZE, config=lb.SMOKE, log_every=0)
    assert again.trained == [] and again.timings_s == {}
    for name, models in first.models.items():
        for lam, model in models.items():
            assert _bytes(again.models[name][lam], images[0]) == _bytes(model, images[0])
    changed = replace(lb.SMOKE, task_weight=lb.SMOKE.task_weight * 2)
    retrained = lb.train_learned_codecs(out, classifier_dir, sample_fn=toy_world.samples, data_seed=DATA_SEED,
                                        image_size=SIZE, config=changed, log_every=0)
    assert sorted(retrained.trained) == sorted(f"task λ={lam:g}" for lam in lb.SMOKE.lambdas)


def _no_sampling(*args, **kwargs):
    raise AssertionError("a cached run must not render training images")


def test_training_is_deterministic(tmp_path, classifier_dir, trained):
    # the base model alone, with the settings of the module's run: the same weights, bit for bit
    tiny = replace(lb.SMOKE, lambdas=(0.1,), base_lambda=0.1, task=(0, 2, 1e-3))
    result = lb.train_learned_codecs(tmp_path, classifier_dir, sample_fn=toy_world.samples, data_seed=DATA_SEED,
                                     image_size=SIZE, config=tiny, log_every=0)
    a, b = result.models[lb.MSE_NAME][0.1].state_dict(), trained[1].models[lb.MSE_NAME][0.1].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
