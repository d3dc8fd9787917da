"""Decoding files from elsewhere: every damaged or crafted ``.slim`` file ends in a named error or a clean decode,
quickly, and a small file cannot claim a large image's worth of time and memory."""

import random
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import slim_diffusers
from slim_diffusers import SLIMBitstreamError, SLIMDecodeLimitError, SLIMPipeline
from slim_diffusers.coding import bitstream as bitstream_module
from slim_diffusers.coding.bitstream import compress_caption, write_uvarint
from slim_diffusers.testing import tiny_pipeline


def seal(height: int, width: int, fingerprint: bytes, caption: bytes, payload: bytes, exact: bool = False,
         rate=None) -> bytes:
    """A .slim file with these fields, whatever they hold, under a valid CRC (what a crafted file looks like):
    version 1, version 2 with the exact-entropy-model flag, or, with a rate, version 3."""
    if rate is not None:
        body = bytearray(b"SLIM\x03") + bytes([0x02 | bool(exact)])
        write_uvarint(int(rate * 16), body)
    else:
        body = bytearray(b"SLIM\x02\x01" if exact else b"SLIM\x01")
    write_uvarint(height, body)
    write_uvarint(width, body)
    body += fingerprint
    write_uvarint(len(caption), body)
    body += caption
    write_uvarint(len(payload), body)
    body += payload
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


@pytest.fixture(scope="module")
def tiny():
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def toy():
    pipe = SLIMPipeline.from_pretrained(Path(slim_diffusers.__file__).parent / "assets" / "toy" / "slim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("side, error", [(2048, SLIMBitstreamError), (4096, SLIMBitstreamError), (16384, SLIMDecodeLimitError)])
@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_27_byte_bombs_are_refused_at_once(model, side, error, request):
    # 27 bytes claiming a huge image: within the pixel limit the payload is too short for the symbols such an
    # image has (the coder refuses it before decoding); beyond it, the header alone is refused
    pipe = request.getfixturevalue(model)
    exact = bool(pipe.decompressor.config.get("exact_entropy_model", False))
    rate = pipe.num_rate_levels - 1 if pipe.num_rate_levels else None  # a variable-rate model's files carry a rate
    header = len(seal(side, side, pipe.decompressor.fingerprint(), b"", b"", exact, rate))
    data = seal(side, side, pipe.decompressor.fingerprint(), b"", bytes(27 - header), exact, rate)
    assert len(data) == 27
    start = time.process_time()  # CPU time: what the file costs, whatever else the machine runs
    with pytest.raises(error) as info:
        pipe.decompress(data, use_diffusion=False)
    assert time.process_time() - start < 0.5
    assert type(info.value) is error
    if error is SLIMDecodeLimitError:
        assert "--max-pixels" in str(info.value) and "max_pixels=" in str(info.value)


def test_the_pixel_limit_is_per_call_and_per_process(tiny, monkeypatch):
    image = PIL.Image.new("RGB", (40, 32), (200, 30, 30))
    (bs,) = tiny.compress(image, captions="x")
    with pytest.raises(SLIMDecodeLimitError, match="40×32"):
        tiny.decompress(bs, use_diffusion=False, max_pixels=40 * 32 - 1)
    assert tiny.decompress(bs, use_diffusion=False, max_pixels=40 * 32, output_type="np").images.shape == (1, 32, 40, 3)
    monkeypatch.setattr(bitstream_module, "MAX_IMAGE_PIXELS", 1000)  # as Pillow's Image.MAX_IMAGE_PIXELS
    with pytest.raises(SLIMDecodeLimitError):
        tiny.decompress(bs, use_diffusion=False)
    monkeypatch.setattr(bitstream_module, "MAX_IMAGE_PIXELS", None)  # no limit
    tiny.decompress(bs, use_diffusion=False)
    # the caller's own images are not limited: __call__ codes and decodes them
    monkeypatch.setattr(bitstream_module, "MAX_IMAGE_PIXELS", 1000)
    assert tiny(image, captions="x", use_diffusion=False).images[0].size == (40, 32)


def test_structure_aware_fuzzing_ends_in_named_errors_or_clean_decodes(tiny):
    """200 files re-sealed with a valid CRC: mutated, cut and lengthened payloads, captions of every length
    (valid or not), claimed image sizes from 1 to 16384. Each ends in SLIMBitstreamError (or its limit
    subclass) or a decode to finite pixels, in under a second of CPU time at the default limits."""
    torch.set_num_threads(1)  # CPU time of one thread: a bound that does not depend on what else the machine runs
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    (bs,) = tiny.compress(image, captions="a red fox")
    rng = random.Random(0)
    outcomes, slowest = Counter(), (0.0, None)
    for i in range(200):
        height, width, caption, payload = bs.height, bs.width, compress_caption(bs.caption), bytearray(bs.payload)
        kind = i % 5
        if kind in (0, 4):
            for _ in range(rng.randint(1, 8)):
                payload[rng.randrange(len(payload))] = rng.randrange(256)
        if kind == 1:
            if rng.random() < 0.5:
                payload = payload[: rng.randrange(len(payload))]
            else:
                payload += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 256)))
        if kind in (2, 4):
            height = rng.choice([1, 2, 7, 31, 64, 255, 600, 2048, 4096, 4097, 16384])
            width = rng.choice([1, 3, 40, 129, 512, 1000, 4096, 16384])
        if kind == 3:
            text = "".join(rng.choice("ab xz\u00e9\u4e2d") for _ in range(rng.choice([0, 1, 5, 200, 1024, 1025])))
            if rng.random() < 0.7:
                caption = compress_caption(text)[:1024]
            else:
                caption = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        data = seal(height, width, bs.fingerprint, caption, bytes(payload))
        start = time.process_time()
        try:
            out = tiny.decompress(data, use_diffusion=i % 10 == 0, num_inference_steps=1, output_type="np").images
            assert out.shape == (1, height, width, 3) and np.isfinite(out).all()
            outcome = "decoded"
        except SLIMBitstreamError as err:
            outcome = type(err).__name__
        elapsed = time.process_time() - start
        slowest = max(slowest, (elapsed, (height, width, len(payload), outcome)), key=lambda x: x[0])
        outcomes[outcome] += 1
    print(dict(outcomes), "slowest case:", slowest)
    assert sum(outcomes.values()) == 200 and outcomes["decoded"] > 0 and outcomes["SLIMBitstreamError"] > 0
    assert outcomes["SLIMDecodeLimitError"] > 0
    assert slowest[0] < 1.0, slowest
