import PIL.Image
import pytest
import torch

from slim_diffusers.bit_allocation import bit_allocation
from slim_diffusers.cli import main
from slim_diffusers.codec import compress_latents, estimate_bits
from slim_diffusers.testing import structured_latents, tiny_pipeline

from ._codec_training import fit_tiny_codec


def test_map_sums_to_the_payload(kodak_dir):
    compressor, decompressor, _, _ = fit_tiny_codec(kodak_dir, steps=80)
    for seed in range(3):
        # the latent of a 768×512 photograph
        item = structured_latents(1, 64, 96, seed=seed + 10, image_dir=str(kodak_dir))
        (payload,) = compress_latents(compressor, decompressor, item)
        bits = bit_allocation(decompressor, payload, item.shape)
        assert bits.shape == decompressor.code_shapes(*item.shape[-2:])[0]
        assert (bits >= 0).all()
        # the same likelihoods the encoder's estimate uses, read back from the bytes
        assert float(bits.sum()) == pytest.approx(estimate_bits(compressor, decompressor, item), rel=1e-4)
        # the map and the coder differ by the coder's own overhead (8-byte final state, word padding) and
        # by its approximations (16-bit CDFs, scales rounded up to the table): a few percent either way,
        # since a wider table scale makes tail symbols cheaper than the exact likelihood says
        assert float(bits.sum()) / 8 == pytest.approx(len(payload), rel=0.06)


def test_inspect_cli_draws_a_map(tmp_path, capsys):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    (bs,) = pipe.compress(PIL.Image.new("RGB", (40, 24), (10, 200, 30)), captions="x")
    bs.save(tmp_path / "a.slim")
    assert main(["inspect", str(tmp_path / "a.slim"), "--model", str(tmp_path / "model"), "-o", str(tmp_path / "m.png"),
                 "--no-diffusion"]) == 0
    assert PIL.Image.open(tmp_path / "m.png").size[0] > 100
    assert f"payload {len(bs.payload)} bytes" in capsys.readouterr().out
