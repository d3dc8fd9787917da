"""Variable-rate SLIM: rate levels (gain vectors), the rate in the .slim header (version 3), the rate knob."""

import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from slim_diffusers import SLIMBitstream, SLIMPipeline
from slim_diffusers.coding.bitstream import MAX_RATE_UNITS, check_rate
from slim_diffusers.coding.latents import compress_latents, decompress_latents, run_codec
from slim_diffusers.errors import SLIMBitstreamError, SLIMModelMismatchError
from slim_diffusers.models.rate_gains import RateGains, initial_log_step, level_lambdas, quantize_rate
from slim_diffusers.testing import exact_codec, structured_latents, tiny_codec, tiny_pipeline

from ._codec_training import fit_tiny_codec

LEVELS = 4
LAMBDAS = (8.0, 2.0, 0.5, 0.125)  # λr per level, level 0 (the fewest bits) first


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


# ------------------------------------------------------------------------------------------------ gains
def test_gains_interpolate_exponentially_between_trained_levels():
    gains = RateGains(LEVELS, 6)
    with torch.no_grad():
        gains.log_gains.copy_(torch.randn(LEVELS, 6))
    table = torch.exp(gains.log_gains)
    for level in range(LEVELS):  # whole rates are exactly the trained vectors
        assert torch.equal(gains(level).flatten(), table[level])
    middle = gains(1.5).flatten()
    assert torch.allclose(middle, torch.sqrt(table[1] * table[2]), rtol=1e-6)  # the geometric mean
    per_item = gains(torch.tensor([0.0, 2.25, 3.0]))
    assert per_item.shape == (3, 6, 1, 1) and torch.equal(per_item[2].flatten(), table[3])
    for bad in (-0.1, 3.01, float("nan")):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 3\]"):
            gains(bad)


def test_levels_order_and_initial_spacing():
    assert level_lambdas([0.25, 16, 1, 4]) == [16.0, 4.0, 1.0, 0.25]
    assert initial_log_step([16, 4, 1, 0.25]) == pytest.approx(0.5 * np.log(4))
    for bad in ([1, 1], [1, -2]):
        with pytest.raises(ValueError):
            level_lambdas(bad)
    start = RateGains(LEVELS, 2, log_step=0.7)
    assert torch.allclose(start(LEVELS - 1), torch.ones(1, 2, 1, 1)) and start(0)[0, 0] < start(1)[0, 0] < 1
    assert quantize_rate(1.54) == 1.5625 and quantize_rate(1.53) == 1.5 and quantize_rate(2) == 2.0


# ---------------------------------------------------------------------------------------------- format
def test_version_3_carries_the_rate_and_older_versions_are_unchanged():
    base = dict(height=64, width=96, fingerprint=b"\x01\x02\x03\x04", caption="a fox", payload=bytes(range(40)))
    fixed = SLIMBitstream(**base)
    assert fixed.version == 1 and fixed.rate is None and fixed.to_bytes()[4] == 1
    assert SLIMBitstream(**base, exact_entropy_model=True).to_bytes()[4:6] == b"\x02\x01"
    for exact in (False, True):
        for rate in (0.0, 2.5, 6.9375, MAX_RATE_UNITS / 16):
            bs = SLIMBitstream(**base, exact_entropy_model=exact, rate=rate)
            data = bs.to_bytes()
            assert data[4] == 3 and data[5] == (0x02 | exact)
            back = SLIMBitstream.from_bytes(data)
            assert back == bs and back.rate == rate and back.exact_entropy_model == exact
            # the rate costs one byte below level 8, two above
            assert len(data) - len(SLIMBitstream(**base, exact_entropy_model=exact, version=2).to_bytes()) == (
                1 if rate < 8 else 2)
    with pytest.raises(SLIMBitstreamError, match="multiple of 1/16"):
        SLIMBitstream(**base, rate=0.3)
    with pytest.raises(SLIMBitstreamError, match="cannot carry a rate"):
        SLIMBitstream(**base, rate=1.0, version=2)
    with pytest.raises(SLIMBitstreamError, match="rate must be a number"):
        SLIMBitstream(**base, rate="high")
    # version 3 is the variable-rate format: a version 3 file always carries a rate
    with pytest.raises(SLIMBitstreamError, match="give the rate"):
        SLIMBitstream(**base, version=3)
    body = bytearray(SLIMBitstream(**base, rate=1.0).to_bytes()[:-4])
    no_rate = bytes(body[:5]) + b"\x00" + bytes(body[7:])  # flag and rate field removed
    with pytest.raises(SLIMBitstreamError, match="version 3 file without the variable-rate flag"):
        SLIMBitstream.from_bytes(with_crc(no_rate))


def test_crafted_rate_fields_are_refused():
    base = dict(height=8, width=8, fingerprint=b"abcd", caption="", payload=bytes(8))
    body = bytearray(SLIMBitstream(**base, rate=1.0).to_bytes()[:-4])
    assert body[6] == 16  # the rate field: 1.0 level in 1/16ths
    too_big = bytearray(body[:6]) + bytes([0x80, 0x20]) + body[7:]  # 4096 sixteenths: level 256
    with pytest.raises(SLIMBitstreamError, match="rate 256 is out of range"):
        SLIMBitstream.from_bytes(with_crc(bytes(too_big)))
    with pytest.raises(SLIMBitstreamError, match="inside the rate field"):
        SLIMBitstream.from_bytes(with_crc(bytes(body[:6]) + b"\x80"))
    body[5] = 0x06  # an unknown flag beside the rate flag
    with pytest.raises(SLIMBitstreamError, match="unsupported .slim flags 0x06"):
        SLIMBitstream.from_bytes(with_crc(bytes(body)))


def test_the_rate_must_fit_the_model():
    base = dict(height=8, width=8, fingerprint=b"abcd", caption="", payload=bytes(8))
    check_rate(SLIMBitstream(**base), 0)
    check_rate(SLIMBitstream(**base, rate=3.0), 4)
    for bs, levels, message in ((SLIMBitstream(**base), 4, "one fixed rate"),
                                (SLIMBitstream(**base, rate=1.0), 0, "variable-rate model"),
                                (SLIMBitstream(**base, rate=3.5), 4, "beyond this model's levels 0…3")):
        with pytest.raises(SLIMModelMismatchError, match=message):
            check_rate(bs, levels)


# ------------------------------------------------------------------------------------------------ codec
@pytest.fixture(scope="module")
def trained(kodak_dir):
    compressor, decompressor, _, _ = fit_tiny_codec(kodak_dir, lmbda=1.0, rate_lambdas=LAMBDAS)
    return compressor, decompressor


@pytest.fixture(scope="module")
def held_out(kodak_dir):
    return structured_latents(batch=4, height=32, width=48, seed=11, image_dir=str(kodak_dir))


def test_bytes_rise_with_the_rate_and_every_level_round_trips(trained, held_out):
    compressor, decompressor = trained
    sizes, errors = [], []
    for rate in (0, 0.5, 1, 1.5, 2, 2.5, 3):
        payloads = compress_latents(compressor, decompressor, held_out, rate)
        decoded = torch.cat([decompress_latents(decompressor, [p], held_out.shape, rate) for p in payloads])
        # the decoder's ẑ is the encoder's: the eval-mode reconstruction at the same rate, exactly
        with torch.no_grad():
            expected = run_codec(compressor, decompressor, held_out, rate).latents
        assert torch.equal(decoded, expected), rate
        sizes.append(sum(len(p) for p in payloads))
        errors.append(float(torch.mean((decoded - held_out) ** 2)))
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes  # interpolated rates fall between their levels
    assert errors[-1] < errors[0], errors


def test_a_payload_decoded_at_another_rate_is_another_latent(trained, held_out):
    compressor, decompressor = trained
    (payload,) = compress_latents(compressor, decompressor, held_out[:1], 1.0)
    right = decompress_latents(decompressor, [payload], held_out.shape, 1.0)
    wrong = decompress_latents(decompressor, [payload], held_out.shape, 3.0)
    assert not torch.allclose(right, wrong)  # which is why the rate travels in the header


def test_rate_arguments_are_checked(trained, held_out):
    compressor, decompressor = trained
    with pytest.raises(ValueError, match="variable-rate"):
        compress_latents(compressor, decompressor, held_out[:1])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        compress_latents(compressor, decompressor, held_out[:1], 3.5)
    fixed_c, fixed_d = tiny_codec()
    with pytest.raises(ValueError, match="codes at one rate"):
        compress_latents(fixed_c, fixed_d, held_out[:1], 1.0)
    with pytest.raises(SLIMModelMismatchError, match="rate levels"):
        compress_latents(fixed_c, decompressor, held_out[:1], 1.0)


def test_fixed_rate_models_are_unchanged_by_the_option():
    fixed_c, fixed_d = tiny_codec()
    vr_c, vr_d = tiny_codec(num_rate_levels=LEVELS)
    assert set(vr_d.state_dict()) - set(fixed_d.state_dict()) == {"rate_inverse_gains.log_gains"}
    assert "num_rate_levels" in fixed_d.config and fixed_d.num_rate_levels == 0
    assert fixed_d.fingerprint() != vr_d.fingerprint()
    # the fixed-rate model's fingerprint does not see the new option (the golden files check the value itself)
    twin = type(fixed_d)(**{k: v for k, v in fixed_d.config.items() if k not in ("num_rate_levels",) and not k.startswith("_")})
    twin.load_state_dict(fixed_d.state_dict())
    assert twin.fingerprint() == fixed_d.fingerprint()


def test_exact_entropy_model_of_a_variable_rate_codec_decodes_every_level(trained, held_out):
    compressor, decompressor = trained
    exact = exact_codec(compressor, decompressor, height=32, width=48)
    assert exact.num_rate_levels == LEVELS and exact.exact_entropy_model
    for rate in (0, 1.25, 3):
        payloads = compress_latents(compressor, exact, held_out[:2], rate)
        decoded = torch.cat([decompress_latents(exact, [p], held_out.shape, rate) for p in payloads])
        with torch.no_grad():
            assert torch.equal(decoded, run_codec(compressor, exact, held_out[:2], rate).latents)


# ---------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def pipe():
    """The tiny pipeline, variable-rate, its levels' gains spread wide enough that its untrained codec's bytes
    change from level to level (trained levels: the tests above)."""
    pipe = tiny_pipeline(num_rate_levels=LEVELS)
    log_gains = 0.75 * (torch.arange(LEVELS, dtype=torch.float32) - 1)[:, None]
    with torch.no_grad():
        pipe.compressor.rate_gains.log_gains.copy_(log_gains.expand_as(pipe.compressor.rate_gains.log_gains))
        pipe.decompressor.rate_inverse_gains.log_gains.copy_(-log_gains.expand_as(pipe.compressor.rate_gains.log_gains))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photos(n: int = 3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x = np.linspace(0, 1, 96)[None, :, None] * rng.uniform(50, 200, 3) + rng.normal(0, 25, (80, 96, 3))
        out.append(PIL.Image.fromarray(np.clip(x + 30 * i, 0, 255).astype(np.uint8)))
    return out


def test_pipeline_rate_knob(pipe, tmp_path):
    images = photos()
    assert pipe.num_rate_levels == LEVELS
    sizes = []
    for rate in (0, 1, 2, 3):
        bitstreams = pipe.compress(images, captions="a gradient", rate=rate)
        assert all(bs.version == 3 and bs.rate == rate for bs in bitstreams)
        sizes.append(sum(bs.num_bytes for bs in bitstreams))
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes
    (default,) = pipe.compress(images[:1], captions="a gradient")
    assert default.rate == LEVELS - 1  # the most bits
    (between,) = pipe.compress(images[:1], captions="a gradient", rate=1.54)
    assert between.rate == 1.5625  # rounded to the 1/16 the header carries
    path = tmp_path / "x.slim"
    between.save(path)
    loaded = SLIMBitstream.load(path)
    out = pipe.decompress(loaded, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    again = pipe.decompress(between, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 80, 96, 3) and np.array_equal(out.images, again.images)
    for bad in (-1, 3.5, "high"):
        with pytest.raises(ValueError, match="rate must be"):
            pipe.compress(images[:1], rate=bad)
    result = pipe(images[:1], captions="a gradient", rate=0, num_inference_steps=2)
    assert result.bitstreams[0].rate == 0 and result.bits_per_pixel[0] < sizes[-1] * 8 / (80 * 96)


def test_files_of_one_kind_of_model_are_refused_by_the_other(pipe):
    fixed = tiny_pipeline()
    fixed.set_progress_bar_config(disable=True)
    image = photos(1)
    with pytest.raises(ValueError, match="trained for one rate"):
        fixed.compress(image, rate=1)
    with pytest.raises(SLIMModelMismatchError, match="one fixed rate"):
        pipe.decompress(fixed.compress(image, captions="x")[0])
    with pytest.raises(SLIMModelMismatchError, match="variable-rate model"):
        fixed.decompress(pipe.compress(image, captions="x", rate=1)[0])


def test_save_and_load_keep_the_levels(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "vr")
    loaded = SLIMPipeline.from_pretrained(tmp_path / "vr")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.num_rate_levels == LEVELS and loaded.compressor.num_rate_levels == LEVELS
    assert loaded.decompressor.fingerprint() == pipe.decompressor.fingerprint()
    image = photos(1)
    assert loaded.compress(image, captions="x", rate=2.5)[0] == pipe.compress(image, captions="x", rate=2.5)[0]


# --------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def vr_model_dir(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("vr_model")
    pipe.save_pretrained(path)
    return path


def test_cli_rate_flag_and_info(vr_model_dir, tmp_path, capsys):
    from slim_diffusers.cli import main

    image = tmp_path / "im.png"
    photos(1)[0].save(image)
    sizes = {}
    for rate in ("0", "3"):
        out = tmp_path / f"r{rate}"
        assert main(["compress", str(image), "--model", str(vr_model_dir), "-o", str(out), "--rate", rate]) == 0
        sizes[rate] = (out / "im.slim").stat().st_size
        assert main(["info", str(out / "im.slim")]) == 0
        assert f"rate             {rate} (a variable-rate model's level" in capsys.readouterr().out
    assert sizes["0"] < sizes["3"]
    assert main(["decompress", str(tmp_path / "r0" / "im.slim"), "--model", str(vr_model_dir), "-o",
                 str(tmp_path / "png"), "--steps", "1"]) == 0
    assert PIL.Image.open(tmp_path / "png" / "im.png").size == (96, 80)
    capsys.readouterr()
    assert main(["compress", str(image), "--model", str(vr_model_dir), "-o", str(tmp_path / "bad"), "--rate", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rate 9: rate must be in [0, 3]" in err[0] and not (tmp_path / "bad").exists()


def test_cli_rate_on_a_fixed_rate_model_is_one_line(tmp_path, capsys):
    from slim_diffusers.cli import main

    model = tmp_path / "fixed"
    tiny_pipeline().save_pretrained(model)
    image = tmp_path / "im.png"
    photos(1)[0].save(image)
    assert main(["compress", str(image), "--model", str(model), "-o", str(tmp_path / "o"), "--rate", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained for one rate" in err[0]
    assert main(["compress", str(image), "--model", str(model), "-o", str(tmp_path / "o")]) == 0
    assert main(["info", str(tmp_path / "o" / "im.slim")]) == 0
    assert "rate             one fixed rate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:  # a usage mistake: argparse's one line
        main(["compress", str(image), "--model", str(model), "-o", str(tmp_path / "o2"), "--rate", "-1"])
    assert usage.value.code == 2 and "expected a rate level" in capsys.readouterr().err


def test_evaluate_sweeps_one_variable_rate_model_as_one_curve(vr_model_dir, tmp_path, capsys):
    import json

    from slim_diffusers import toy_world
    from slim_diffusers.cli import main

    ds_dir, clf_dir = tmp_path / "ds", tmp_path / "clf"
    toy_world.as_dataset(2, seed=7, size=64).save_to_disk(str(ds_dir))
    from slim_diffusers.testing import tiny_classifier

    model, processor = tiny_classifier(num_labels=len(toy_world.CLASS_NAMES), seed=0, image_size=64)
    model.save_pretrained(clf_dir), processor.save_pretrained(clf_dir)
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(vr_model_dir), "--dataset", str(ds_dir), "--classifiers", str(clf_dir),
            "--baselines", "--steps", "1", "-o", str(out)]
    assert main([*args, "--rates", "0", "1.5", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["codecs"]) == ["SLIM"] and set(summary["codecs"]["SLIM"]) == {"rate=0", "rate=1.5", "rate=3"}
    bpp = [summary["codecs"]["SLIM"][p]["mean_bpp"] for p in ("rate=0", "rate=1.5", "rate=3")]
    assert bpp[0] < bpp[2]
    for point, rate in (("rate=0", 0.0), ("rate=1.5", 1.5), ("rate=3", 3.0)):
        files = sorted((out / "bitstreams" / "SLIM" / point).glob("*.slim"))
        assert len(files) == 2 and all(SLIMBitstream.load(f).rate == rate for f in files)
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "e2"), "--rates", "4"]) == 2
    assert "rate must be in [0, 3]" in capsys.readouterr().err


def test_crafted_variable_rate_files_end_in_named_errors_or_clean_decodes(pipe):
    """Version 3 files re-sealed under a valid CRC with every kind of rate field (trained levels, fractions, beyond
    the model's levels, the format's maximum), flags and mutated payloads: each ends in a named error or a decode to
    finite pixels, quickly."""
    import random
    import time

    from slim_diffusers.coding.bitstream import write_uvarint

    torch.set_num_threads(1)
    (bs,) = pipe.compress(photos(1), captions="a gradient", rate=2)
    rng = random.Random(0)
    outcomes = {}
    for i in range(60):
        units = rng.choice([0, 1, 16, 24, 47, 48, 49, 63, 4095, rng.randrange(4096)])
        flags = rng.choice([0x02, 0x02, 0x02, 0x03, 0x00, 0x06])
        payload = bytearray(bs.payload)
        for _ in range(rng.randint(0, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        body = bytearray(b"SLIM\x03") + bytes([flags])
        if flags & 0x02:
            write_uvarint(units, body)
        for value in (bs.height, bs.width):
            write_uvarint(value, body)
        body += bs.fingerprint
        caption = __import__("slim_diffusers").coding.bitstream.compress_caption(bs.caption)
        write_uvarint(len(caption), body)
        body += caption
        write_uvarint(len(payload), body)
        body += payload
        data = with_crc(bytes(body))
        start = time.process_time()
        try:
            out = pipe.decompress(data, use_diffusion=False, output_type="np").images
            assert np.isfinite(out).all() and units <= 48 and flags == 0x02
            outcome = "decoded"
        except (SLIMBitstreamError, SLIMModelMismatchError) as err:
            outcome = type(err).__name__
        assert time.process_time() - start < 1.0
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert {"decoded", "SLIMBitstreamError", "SLIMModelMismatchError"} <= set(outcomes), outcomes
