import numpy as np
import pytest
import torch

from slim_diffusers import toy_world
from slim_diffusers.evaluation.baselines import (
    CodecDataError,
    CodecUnavailableError,
    CompressAICodec,
    PillowCodec,
    pillow_supports,
)
from slim_diffusers.evaluation.codecs import Codec

QUALITIES = [5, 20, 50, 90]


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def images():
    return [s.image for s in toy_world.samples(4, seed=3, size=64)]


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_pillow_curves_are_monotone_in_quality(fmt, images):
    codec = PillowCodec(fmt, qualities=QUALITIES)
    assert isinstance(codec, Codec)
    sizes, psnrs = [], []
    for q in codec.rate_points:
        data = [codec.encode(image, q) for image in images]
        decoded = [codec.decode(d, q) for d in data]
        assert all(d.size == image.size and d.mode == "RGB" for d, image in zip(decoded, images))
        sizes.append([len(d) for d in data])
        psnrs.append(np.mean([_psnr(image, d) for image, d in zip(images, decoded)]))
    sizes = np.array(sizes)
    assert (np.diff(sizes, axis=0) > 0).all(), sizes  # every image, not only on average
    assert (np.diff(psnrs) > 0).all(), psnrs


def test_avif_when_pillow_has_it(images):
    if not pillow_supports("AVIF"):
        with pytest.raises(CodecUnavailableError, match="AVIF"):
            PillowCodec("AVIF")
        return
    codec = PillowCodec("avif", qualities=[10, 80])
    small, large = (codec.encode(images[0], q) for q in codec.rate_points)
    assert len(small) < len(large)
    assert codec.decode(small, 10).size == images[0].size


def test_pillow_rejects_bad_settings_and_bytes(images):
    with pytest.raises(ValueError, match="unknown Pillow format"):
        PillowCodec("GIF")
    with pytest.raises(ValueError, match="qualities"):
        PillowCodec("JPEG", qualities=[0, 50])
    with pytest.raises(CodecDataError, match="JPEG"):
        PillowCodec("JPEG").decode(PillowCodec("WEBP").encode(images[0], 50), 50)


def _tiny_compressai_model(seed: int):
    from compressai.models import FactorizedPrior

    torch.manual_seed(seed)
    return FactorizedPrior(N=8, M=8)  # random weights: what matters here is the bitstream plumbing


def test_compressai_codec_round_trips_through_its_own_bytes(images):
    codec = CompressAICodec({"a": _tiny_compressai_model(0), "b": _tiny_compressai_model(1)}, name="factorized")
    assert isinstance(codec, Codec) and codec.rate_points == ["a", "b"]
    image = images[0].crop((0, 0, 50, 37))  # not a multiple of the model's stride
    data = codec.encode(image, "a")
    decoded = codec.decode(data, "a")
    assert decoded.size == (50, 37) and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(codec.decode(data, "a")), np.asarray(decoded))  # deterministic
    # the bytes are the whole message: the same bytes decode the same way in a fresh codec object
    again = CompressAICodec({"a": _tiny_compressai_model(0)})
    assert np.array_equal(np.asarray(again.decode(data, "a")), np.asarray(decoded))
    with pytest.raises(CodecDataError, match="truncated"):
        codec.decode(data[: len(data) // 2], "a")
    with pytest.raises(CodecDataError, match="after the last stream"):
        codec.decode(data + b"\0", "a")


def test_compressai_zoo_without_weights_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: no weights here
    with pytest.raises(CodecUnavailableError, match="no weights for CompressAI bmshj2018-hyperprior quality 2"):
        CompressAICodec.from_zoo("bmshj2018-hyperprior", qualities=[2], download=False)
    with pytest.raises(ValueError, match="unknown CompressAI model"):
        CompressAICodec.from_zoo("jpeg-2000", qualities=[1], download=False)
    with pytest.raises(CodecUnavailableError, match="no pretrained"):
        CompressAICodec.from_zoo("bmshj2018-hyperprior", qualities=[42], download=False)


def test_compressai_codec_decodes_a_batch_as_it_decodes_each(images):
    codec = CompressAICodec({"a": _tiny_compressai_model(0)})
    datas = [codec.encode(image, "a") for image in images]
    together = codec.decode_batch(datas, "a")
    for data, image in zip(datas, together):
        alone = np.asarray(codec.decode(data, "a"), np.int16)
        assert image.size == codec.decode(data, "a").size
        assert np.abs(alone - np.asarray(image, np.int16)).max() <= 1  # the synthesis rounds per batch size
