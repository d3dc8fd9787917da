import time

import pytest
import torch

from slim_diffusers import SLIMBitstreamError, SLIMCompressor, SLIMDecompressor, SLIMModelMismatchError
from slim_diffusers.coding.latents import compress_latents, decompress_latents, estimate_bits, run_codec
from slim_diffusers.testing import TINY_CODEC_CONFIG, structured_latents, tiny_codec

from ._codec_training import fit_tiny_codec


@pytest.fixture(scope="module")
def codec():
    return tiny_codec(seed=0)


@pytest.fixture(scope="module")
def trained(kodak_dir):
    return fit_tiny_codec(kodak_dir, steps=120)


def eval_reconstruction(compressor, decompressor, latents):
    with torch.no_grad():
        return run_codec(compressor, decompressor, latents).latents


@pytest.mark.parametrize("shape", [(1, 4, 16, 16), (2, 4, 13, 21), (3, 4, 5, 3), (1, 4, 20, 36)])
def test_round_trip_is_exact(codec, shape):
    compressor, decompressor = codec
    latents = structured_latents(shape[0], *shape[2:], seed=sum(shape)) * 1.5
    payloads = compress_latents(compressor, decompressor, latents)
    assert len(payloads) == shape[0] and all(isinstance(p, bytes) and p for p in payloads)
    decoded = decompress_latents(decompressor, payloads, shape)
    assert decoded.shape == latents.shape
    assert torch.equal(decoded, eval_reconstruction(compressor, decompressor, latents))


def test_batch_codes_like_singles(codec):
    compressor, decompressor = codec
    latents = structured_latents(2, 12, 20, seed=3)
    batch = compress_latents(compressor, decompressor, latents)
    singles = [compress_latents(compressor, decompressor, latents[i : i + 1])[0] for i in range(2)]
    assert batch == singles
    decoded = decompress_latents(decompressor, batch, latents.shape)
    for i in range(2):
        assert torch.equal(decoded[i : i + 1], decompress_latents(decompressor, [singles[i]], latents.shape))


def test_thread_count_does_not_change_bytes_or_decoding(codec):
    compressor, decompressor = codec
    latents = structured_latents(2, 24, 24, seed=5) * 2
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        payloads = compress_latents(compressor, decompressor, latents)
        results.append((payloads, decompress_latents(decompressor, payloads, latents.shape)))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_save_and_load_give_identical_bytes(codec, tmp_path):
    compressor, decompressor = codec
    compressor.save_pretrained(tmp_path / "compressor")
    decompressor.save_pretrained(tmp_path / "decompressor")
    assert (tmp_path / "decompressor" / "diffusion_pytorch_model.safetensors").is_file()
    compressor2 = SLIMCompressor.from_pretrained(tmp_path / "compressor").eval()
    decompressor2 = SLIMDecompressor.from_pretrained(tmp_path / "decompressor").eval()
    assert list(decompressor2.config.groups) == list(decompressor.config.groups)
    assert decompressor2.fingerprint() == decompressor.fingerprint()
    latents = structured_latents(2, 16, 16, seed=7)
    payloads = compress_latents(compressor, decompressor, latents)
    assert compress_latents(compressor2, decompressor2, latents) == payloads
    assert torch.equal(
        decompress_latents(decompressor2, payloads, latents.shape),
        decompress_latents(decompressor, payloads, latents.shape),
    )


def test_written_bytes_match_the_rate_estimate(trained):
    compressor, decompressor, latents, history = trained
    assert history[-1] < 0.6 * history[0], "training the tiny codec should lower its rate"
    payloads = compress_latents(compressor, decompressor, latents)
    for i, payload in enumerate(payloads):
        estimate = estimate_bits(compressor, decompressor, latents[i : i + 1]) / 8
        assert estimate * 0.98 - 64 <= len(payload) <= estimate * 1.02 + 64, (estimate, len(payload))
    # and the estimate itself is the sum of the training-style likelihoods in eval mode
    total = estimate_bits(compressor, decompressor, latents)
    assert total == pytest.approx(sum(estimate_bits(compressor, decompressor, latents[i : i + 1]) for i in range(8)), rel=1e-5)


def test_training_forward_gives_gradients_and_rate(codec):
    compressor, decompressor = tiny_codec(seed=1)
    compressor.train(), decompressor.train()
    latents = structured_latents(2, 16, 16)
    out = run_codec(compressor, decompressor, latents)
    assert out.latents.shape == latents.shape
    assert set(out.likelihoods) == {"y", "z"}
    out.bits().backward()
    assert compressor.g_a[0].weight.grad is not None
    assert decompressor.hyper_codec.h_s[0].weight.grad is not None


def test_mismatched_components_are_refused(codec):
    compressor, _ = codec
    other = SLIMDecompressor(**{**TINY_CODEC_CONFIG, "latent_codec_channels": 48}, groups=(8, 8, 16, 16))
    other.update()
    with pytest.raises(SLIMModelMismatchError, match="latent_codec_channels"):
        compress_latents(compressor, other, structured_latents())


def test_coding_without_tables_says_what_to_do():
    compressor, decompressor = SLIMCompressor(**TINY_CODEC_CONFIG), SLIMDecompressor(
        **TINY_CODEC_CONFIG, groups=(4, 4, 8, 16)
    )
    with pytest.raises(RuntimeError, match="update"):
        compress_latents(compressor.eval(), decompressor.eval(), structured_latents())


def test_default_config_matches_the_paper():
    compressor, decompressor = SLIMCompressor(), SLIMDecompressor()
    assert decompressor.total_stride == 16  # stride 4 on the latent, 4 more for the hyper-latent
    assert decompressor.code_shapes(64, 64) == ((16, 16), (4, 4))
    assert decompressor.config.latent_codec_channels == 320 and decompressor.config.hyper_channels == 192
    assert list(decompressor.config.groups) == [16, 16, 32, 64, 192]
    y, z = compressor(torch.zeros(1, 4, 64, 64), return_dict=False)
    assert y.shape == (1, 320, 16, 16) and z.shape == (1, 192, 4, 4)
    # no parameter lives in both components
    assert not {n for n, _ in compressor.named_parameters()} & {n for n, _ in decompressor.named_parameters()}


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (16, 16), (48, 64)])
def test_every_written_payload_is_at_least_the_minimum_length(codec, shape):
    # constant latents give the shortest payloads this model writes; all of them must pass the length check
    compressor, decompressor = codec
    for latents in (torch.zeros(1, 4, *shape), torch.full((1, 4, *shape), 3.0), structured_latents(1, *shape, seed=2)):
        (payload,) = compress_latents(compressor, decompressor, latents)
        _, z_size = decompressor.code_shapes(*shape)
        assert len(payload) >= decompressor.entropy_coder.min_payload_bytes(z_size)
        decompress_latents(decompressor, [payload], latents.shape)


def test_a_payload_too_short_for_its_latent_size_is_refused_before_decoding(codec):
    # a few bytes claiming a huge latent: refused from the sizes alone, without decoding a symbol
    compressor, decompressor = codec
    (payload,) = compress_latents(compressor, decompressor, structured_latents(1, 16, 16, seed=1))
    start = time.perf_counter()
    with pytest.raises(SLIMBitstreamError, match="cannot hold"):
        decompress_latents(decompressor, [payload], (1, 4, 2048, 2048))
    assert time.perf_counter() - start < 0.5
