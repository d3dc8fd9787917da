import random
import struct
import subprocess
import sys
import zlib

import pytest

from slim_diffusers.coding.bitstream import MAX_CAPTION_BYTES, SLIMBitstream, compress_caption
from slim_diffusers.coding.latents import compress_latents, decompress_latents
from slim_diffusers.errors import SLIMBitstreamError
from slim_diffusers.testing import structured_latents, tiny_codec


@pytest.fixture(scope="module")
def sample():
    compressor, decompressor = tiny_codec()
    latents = structured_latents(1, 8, 12, seed=1)
    payload = compress_latents(compressor, decompressor, latents)[0]
    bs = SLIMBitstream(height=64, width=96, fingerprint=decompressor.fingerprint(), caption="a red fox", payload=payload)
    return bs, decompressor


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_round_trip_and_rate(sample, tmp_path):
    bs, _ = sample
    data = bs.to_bytes()
    assert SLIMBitstream.from_bytes(data) == bs
    path = tmp_path / "x.slim"
    assert bs.save(path) == len(data) == path.stat().st_size
    assert SLIMBitstream.load(path) == bs
    assert bs.bits_per_pixel == pytest.approx(8 * path.stat().st_size / (64 * 96))
    payload_len_field = 1 if len(bs.payload) < 128 else 2
    header = 4 + 1 + 1 + 1 + 4 + 1  # magic, version, height, width, fingerprint, caption length
    assert bs.num_bytes == header + len(compress_caption(bs.caption)) + payload_len_field + len(bs.payload) + 4


def test_layout_is_as_documented(sample):
    bs, _ = sample
    data = bs.to_bytes()
    assert data[:4] == b"SLIM" and data[4] == 1
    assert len(bs.payload) >= 128  # the payload length field below is two bytes
    assert data[5:7] == bytes([64]) + bytes([96])  # one-byte varints
    assert data[7:11] == bs.fingerprint
    caption = compress_caption(bs.caption)
    assert data[11] == len(caption) and data[12 : 12 + len(caption)] == caption
    assert zlib.decompress(caption, wbits=-15) == b"a red fox"
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_empty_caption_costs_one_byte(sample):
    bs, _ = sample
    empty = SLIMBitstream(bs.height, bs.width, bs.fingerprint, "", bs.payload)
    assert len(bs.to_bytes()) - len(empty.to_bytes()) == len(compress_caption(bs.caption))
    assert SLIMBitstream.from_bytes(empty.to_bytes()).caption == ""


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: b"JPEG" + d[4:], "magic"),
        (lambda d: d[:4] + bytes([9]) + d[5:], "version 9"),
        (lambda d: d[:-1], "CRC"),
        (lambda d: d[:6], "CRC|short"),
        (lambda d: b"", "magic"),
        (lambda d: d[:10] + bytes([d[10] ^ 1]) + d[11:], "CRC"),
        (lambda d: with_crc(d[:5] + b"\xff\xff\xff\xff\xff\x01" + d[6:-4]), "height"),
        (lambda d: with_crc(d[:5] + bytes([0]) + d[6:-4]), "out of range"),
        (lambda d: with_crc(d[:11] + bytes([0x7F]) + d[12:-4]), "caption"),
        (lambda d: with_crc(d[:-5]), "payload length"),
        (lambda d: with_crc(d[:-4] + b"\x00" * 5), "payload length"),
        (lambda d: with_crc(d[:-4] + b"\x00"), "payload length"),
    ],
)
def test_malformed_files_raise_named_errors(sample, mangle, message):
    bs, _ = sample
    with pytest.raises(SLIMBitstreamError, match=message):
        SLIMBitstream.from_bytes(mangle(bs.to_bytes()))


def test_caption_bomb_is_refused(sample):
    bs, _ = sample
    bomb = zlib.compressobj(9, wbits=-15)
    bomb = bomb.compress(b"a" * 10_000_000) + bomb.flush()
    assert len(bomb) < 16_000
    body = bytearray(b"SLIM\x01\x40\x60") + bs.fingerprint
    body += bytes([0x80 | (len(bomb) & 0x7F), len(bomb) >> 7]) + bomb + b"\x00"
    with pytest.raises(SLIMBitstreamError, match="caption"):
        SLIMBitstream.from_bytes(with_crc(bytes(body)))
    with pytest.raises(SLIMBitstreamError, match="caption too long"):
        SLIMBitstream(64, 96, bs.fingerprint, "x" * (MAX_CAPTION_BYTES + 1), b"").to_bytes()


def test_bad_fields_are_refused_when_writing(sample):
    bs, _ = sample
    for kwargs in ({"height": 0}, {"width": 1 << 20}, {"fingerprint": b"abc"}, {"version": 3}):
        with pytest.raises(SLIMBitstreamError):
            SLIMBitstream(**{**bs.__dict__, **kwargs})


def test_random_mutations_and_truncations(sample):
    """2,000 damaged files: each ends in SLIMBitstreamError or a clean decode, nothing else."""
    bs, decompressor = sample
    data = bs.to_bytes()
    rng = random.Random(0)
    errors = decoded = 0
    for i in range(2000):
        damaged = bytearray(data)
        kind = i % 4
        if kind == 0:
            damaged = damaged[: rng.randrange(len(damaged))]
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 2:
            pos = rng.randrange(len(damaged))
            damaged[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            pos = rng.randrange(4, len(damaged))
            damaged[pos] ^= 1 << rng.randrange(8)
        try:
            parsed = SLIMBitstream.from_bytes(bytes(damaged))
        except SLIMBitstreamError:
            errors += 1
            continue
        decompress_latents(decompressor, [parsed.payload], (8, 12))
        decoded += 1
    assert errors + decoded == 2000 and errors >= 1990


FUZZ_PAYLOADS = r"""
import random, resource, sys, torch
from slim_diffusers.coding.latents import compress_latents, decompress_latents
from slim_diffusers.errors import SLIMBitstreamError
from slim_diffusers.testing import structured_latents, tiny_codec
compressor, decompressor = tiny_codec()
payload = compress_latents(compressor, decompressor, structured_latents(1, 8, 12, seed=1))[0]
rng = random.Random(1)
outcomes = {"error": 0, "decoded": 0}
for i in range(400):
    p = bytearray(payload)
    if i % 3 == 0:
        p = bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 8, 12, 64, 400])))
    elif i % 3 == 1:
        for _ in range(rng.randint(1, 6)):
            p[rng.randrange(len(p))] = rng.randrange(256)
    else:
        p = p[: rng.randrange(len(p))] + b"\xff" * (4 * rng.randrange(4))
    try:
        out = decompress_latents(decompressor, [bytes(p)], (8, 12))
        assert out.shape == (1, 4, 8, 12)
        outcomes["decoded"] += 1
    except SLIMBitstreamError:
        outcomes["error"] += 1
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(outcomes, rss_mb)
sys.exit(0 if rss_mb < 3000 else 3)
"""


def test_corrupt_payloads_behind_a_valid_crc_decode_cleanly():
    """A payload that passed the CRC but is garbage (a malicious file) must not crash, hang or blow up
    memory: CompressAI's rANS decoder reads past its buffer unless we bound it. Run in a child process so
    that a crash or a hang fails this test instead of the suite."""
    result = subprocess.run([sys.executable, "-c", FUZZ_PAYLOADS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


# ----------------------------------------------------------------------------------------- version 2
def test_version_2_has_a_flags_byte_and_round_trips(sample):
    bs, _ = sample
    exact = SLIMBitstream(**{**bs.__dict__, "exact_entropy_model": True, "version": None})
    data = exact.to_bytes()
    assert (exact.version, data[4], data[5]) == (2, 2, 0x01)
    assert len(data) == len(bs.to_bytes()) + 1
    assert data[6:-4] == bs.to_bytes()[5:-4]  # the rest of the layout is version 1's
    parsed = SLIMBitstream.from_bytes(data)
    assert parsed == exact and parsed.exact_entropy_model and parsed.entropy_model == "exact integer entropy model"
    # version 2 with no flag set: a float model's file (what later flags build on)
    plain = SLIMBitstream(**{**bs.__dict__, "version": 2})
    assert SLIMBitstream.from_bytes(plain.to_bytes()) == plain and not plain.exact_entropy_model
    # version 1 bytes are unchanged and cannot carry the flag
    assert bs.version == 1 and bs.to_bytes()[4] == 1
    with pytest.raises(SLIMBitstreamError, match="version 1 cannot mark"):
        SLIMBitstream(**{**bs.__dict__, "exact_entropy_model": True, "version": 1})


def test_version_2_reserved_and_unknown_flags_are_refused(sample):
    bs, _ = sample
    body = bytearray(SLIMBitstream(**{**bs.__dict__, "exact_entropy_model": True, "version": None}).to_bytes()[:-4])
    # the variable-rate flag belongs to version 3 files: in a version 2 file it is corruption
    for flags, message in ((0x03, "variable-rate flag"), (0x02, "variable-rate flag"), (0x05, "unsupported .slim flags"),
                           (0x80, "unsupported .slim flags")):
        body[5] = flags
        with pytest.raises(SLIMBitstreamError, match=message):
            SLIMBitstream.from_bytes(with_crc(bytes(body)))
    with pytest.raises(SLIMBitstreamError, match="before the flags"):
        SLIMBitstream.from_bytes(with_crc(b"SLIM\x02"))


def test_version_2_pixel_limit_is_checked_from_the_header(sample):
    from slim_diffusers.coding.bitstream import check_decode_limit, write_uvarint
    from slim_diffusers.errors import SLIMDecodeLimitError

    bs, _ = sample
    body = bytearray(b"SLIM\x02\x01")
    write_uvarint(16384, body)
    write_uvarint(16384, body)
    body += bs.fingerprint + b"\x00\x08" + bytes(8)
    claimed = SLIMBitstream.from_bytes(with_crc(bytes(body)))
    with pytest.raises(SLIMDecodeLimitError):
        check_decode_limit(claimed)
