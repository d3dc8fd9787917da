import PIL.Image
import pytest
import torch

from slim_diffusers.coding.bit_allocation import bit_allocation, bits_per_pixel_map
from slim_diffusers.cli import main
from slim_diffusers.coding.latents import compress_latents, estimate_bits
from slim_diffusers.testing import structured_latents, tiny_pipeline
from slim_diffusers.toy_world import sample

from ._codec_training import fit_tiny_codec


def test_map_sums_to_the_payload(kodak_dir):
    # a short fit is enough for realistic entropy-model scales (an untrained codec's map is ~13% off)
    compressor, decompressor, _, _ = fit_tiny_codec(kodak_dir, steps=20)
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
        assert float(bits.sum()) / 8 == pytest.approx(len(payload), rel=0.05)


def test_map_is_spread_at_the_latent_stride_over_the_padded_image():
    pipe = tiny_pipeline()
    image = sample(3, size=64).image.crop((0, 0, 40, 24))
    (bs,) = pipe.compress(image, captions="x")
    s = pipe.vae_scale_factor
    bits = bit_allocation(pipe.decompressor, bs.payload, (-(-24 // s), -(-40 // s)))
    # a 3×5 latent is padded to 16×16 for coding: y is 4×4, each position 32×32 pixels of a 128×128 canvas
    stride = s * 2**pipe.decompressor.config.num_upsamples
    assert stride == 32 and bits.shape == (4, 4)
    per_pixel = bits_per_pixel_map(bits, stride, image.size)
    assert per_pixel.shape == (24, 40)
    # only positions (0, 0) and (0, 1) touch the image, with 24×32 and 24×8 of their pixels
    inside = float(bits[0, 0]) * 24 * 32 / 32**2 + float(bits[0, 1]) * 24 * 8 / 32**2
    assert per_pixel.sum() == pytest.approx(inside, rel=1e-6)
    # without padding the map keeps every bit
    assert bits_per_pixel_map(bits, stride, (128, 128)).sum() == pytest.approx(float(bits.sum()), rel=1e-6)
    with pytest.raises(ValueError, match="stride"):
        bits_per_pixel_map(bits, 8, image.size)


def test_inspect_cli_draws_a_map(tmp_path, capsys):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    (bs,) = pipe.compress(PIL.Image.new("RGB", (40, 24), (10, 200, 30)), captions="x")
    bs.save(tmp_path / "a.slim")
    assert main(["inspect", str(tmp_path / "a.slim"), "--model", str(tmp_path / "model"), "-o", str(tmp_path / "m.png"),
                 "--no-diffusion"]) == 0
    assert PIL.Image.open(tmp_path / "m.png").size[0] > 100
    out = capsys.readouterr().out
    assert f"payload {len(bs.payload)} bytes" in out and "4×4 positions of 32×32 pixels" in out
