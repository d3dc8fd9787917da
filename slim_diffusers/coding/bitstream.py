"""The ``.slim`` file format: one compressed image for a machine.

Byte layout (integers little-endian, ``uvarint`` = unsigned LEB128, at most 5 bytes)::

    offset  size      field
    0       4         magic, the ASCII bytes ``SLIM``
    4       1         format version: 1 (floating-point entropy model), 2 (exact entropy model) or 3
                      (variable rate)
    5       1         versions 2 and 3: flags
                        bit 0  the payload needs an exact (integer) entropy model
                               (``SLIMDecompressor(exact_entropy_model=True)``)
                        bit 1  variable rate: a rate field follows the flags (version 3 only, where it
                               is always set)
                        bits 2–7 reserved, zero
            uvarint   version 3 with flag bit 1 only: the rate, in 1/16 of a rate level (0 … 4095: levels
                      0 … 255.9375), at which a variable-rate model coded the payload
                      (:mod:`slim_diffusers.models.rate_gains`)
            uvarint   image height in pixels (1 … 16384)
            uvarint   image width in pixels (1 … 16384)
            4         model fingerprint: first 4 bytes of the BLAKE2b digest of the decompressor's weights
                      and CDF tables (:meth:`SLIMDecompressor.fingerprint`)
            uvarint   caption length in bytes, compressed (0 … 1024)
            n         caption: UTF-8 text compressed with zlib's raw DEFLATE (``wbits=-15``: no zlib
                      header or Adler-32, the file has its own CRC); decompressed at most 1024 bytes
            uvarint   payload length in bytes
            n         payload: one rANS stream of the latent (:mod:`slim_diffusers.coding.latents`)
            4         CRC-32 (``zlib.crc32``) of every byte before it

An empty caption costs one byte (its zero length). The header adds 15–17 bytes (version 2: 16–18; version 3
with a rate below level 8: 17–19) to the payload and caption; bits per pixel counts all of them.

Version 1 files are written by floating-point entropy models and decode only with one (their entropy
parameters are float network outputs: exact only when both ends compute them on the same kind of device);
version 2 files with flag bit 0 are written by exact entropy models and decode only with one, to the same
``ŷ`` on every device. A decoder refuses the other kind with :class:`~slim_diffusers.SLIMModelMismatchError`.
Version 3 files are written by variable-rate models (one model, many rates) and carry the rate the payload was
coded at; their flag bit 0 says which kind of entropy model they need, as in version 2. Models of one rate still
write version 1 or 2 files, byte for byte as before; a variable-rate model refuses files without a rate and a
fixed-rate model files with one (:func:`check_rate`).

Every malformed input raises :class:`SLIMBitstreamError` before any memory is sized from a header field:
lengths are checked against the bytes actually present and against the limits above.

Decoders also refuse, by default, images of more than :data:`MAX_IMAGE_PIXELS` pixels
(:func:`check_decode_limit`, :class:`~slim_diffusers.SLIMDecodeLimitError`): the format allows 16384×16384, and
a file of 27 bytes can claim it.
"""

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple, Type, Union

from ..errors import SLIMBitstreamError, SLIMDecodeLimitError, SLIMModelMismatchError
from ..utils.file_utils import write_atomically

MAGIC = b"SLIM"
FORMAT_VERSION = 3  # the newest; fixed-rate models still write version 1 (float) or 2 (exact) files
SUPPORTED_VERSIONS = (1, 2, 3)
# flags of versions 2 and 3
FLAG_EXACT_ENTROPY_MODEL = 0x01
FLAG_VARIABLE_RATE = 0x02  # version 3: a rate field follows the flags
KNOWN_FLAGS = {2: FLAG_EXACT_ENTROPY_MODEL, 3: FLAG_EXACT_ENTROPY_MODEL | FLAG_VARIABLE_RATE}
# the rate field: a rate level in units of 1/RATE_STEPS (slim_diffusers.models.rate_gains quantises rates to it)
RATE_STEPS = 16
MAX_RATE_UNITS = 256 * RATE_STEPS - 1
MAX_SIDE = 16384
MAX_CAPTION_BYTES = 1024
FINGERPRINT_BYTES = 4
# a 16384² image at an absurd 8 bpp is 256 MiB; anything larger is not a .slim file
MAX_FILE_BYTES = 1 << 28
# The decoders' default limit on the pixels of the image a file claims (like Pillow's Image.MAX_IMAGE_PIXELS);
# None removes it. 4096×4096 admits every photograph a machine is usually sent (a 16.7-megapixel camera
# frame, 4K video frames) while a 27-byte file claiming 16384×16384 is refused. Raise it per call
# (`SLIMPipeline.decompress(..., max_pixels=N)`, `slim decompress --max-pixels N`) or here, for the process.
MAX_IMAGE_PIXELS: Optional[int] = 4096 * 4096

__all__ = [
    "FORMAT_VERSION",
    "SLIMBitstream",
    "MAX_IMAGE_PIXELS",
    "SLIMBitstreamError",
    "check_decode_limit",
    "check_entropy_model",
    "check_rate",
    "compress_caption",
    "decompress_caption",
]


def write_uvarint(value: int, out: bytearray) -> None:
    """Append ``value`` as unsigned LEB128 (7 bits a byte, low bits first)."""
    if value < 0:
        raise ValueError("uvarint fields are unsigned")
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


def read_uvarint(
    data: bytes, pos: int, field: str, error: Type[ValueError] = SLIMBitstreamError, what: str = ".slim data"
) -> Tuple[int, int]:
    """Read an unsigned LEB128 of at most 5 bytes at ``pos``; return ``(value, next position)``.

    Malformed input raises ``error`` with a message naming ``what`` is being read and the ``field``.
    """
    value = 0
    for i in range(5):
        if pos >= len(data):
            raise error(f"truncated {what}: it ends inside the {field} field")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise error(f"corrupt {what}: the {field} field is longer than 5 bytes")


def compress_caption(caption: str) -> bytes:
    """Raw-DEFLATE the caption (zlib, level 9). The empty caption is zero bytes."""
    if not caption:
        return b""
    packer = zlib.compressobj(level=9, wbits=-15)
    return packer.compress(caption.encode("utf-8")) + packer.flush()


def decompress_caption(data: bytes) -> str:
    if not data:
        return ""
    unpacker = zlib.decompressobj(wbits=-15)
    try:
        # bounded: never inflate more than the format allows (a tiny DEFLATE stream can expand 1000×)
        text = unpacker.decompress(data, MAX_CAPTION_BYTES + 1)
    except zlib.error as err:
        raise SLIMBitstreamError(f"corrupt caption in .slim data ({err})") from None
    if len(text) > MAX_CAPTION_BYTES or unpacker.unconsumed_tail or not unpacker.eof or unpacker.unused_data:
        raise SLIMBitstreamError(
            f"corrupt caption in .slim data: not one DEFLATE stream of at most {MAX_CAPTION_BYTES} bytes"
        )
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise SLIMBitstreamError("corrupt caption in .slim data: not UTF-8 text") from None


def check_decode_limit(bitstream: "SLIMBitstream", max_pixels: Optional[int] = None, name: str = "the .slim file") -> None:
    """Raise :class:`SLIMDecodeLimitError` when ``bitstream`` claims more than ``max_pixels`` pixels (``None``: the
    module's :data:`MAX_IMAGE_PIXELS`, read at call time; a limit of ``None`` there means no limit). ``name``
    names the file in the message. Decoders call it right after parsing, before anything is sized from the header."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    pixels = bitstream.height * bitstream.width
    if limit is not None and pixels > limit:
        raise SLIMDecodeLimitError(
            f"{name} claims a {bitstream.width}×{bitstream.height} image ({pixels / 1e6:.1f} megapixels), more than "
            f"the decoding limit of {limit} pixels ({limit / 1e6:.1f} megapixels); if you trust the file, raise the "
            f"limit: `slim decompress --max-pixels {pixels}` or `pipe.decompress(..., max_pixels={pixels})`"
        )


def entropy_model_name(exact: bool) -> str:
    return "exact integer entropy model" if exact else "floating-point entropy model"


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def check_entropy_model(bitstream: "SLIMBitstream", exact_entropy_model: bool, name: str = "the .slim file") -> None:
    """Raise :class:`SLIMModelMismatchError` when ``bitstream`` needs the other kind of entropy model than the
    decoder's (``exact_entropy_model``): version 2 files of exact models, version 1 files of float ones."""
    if bitstream.exact_entropy_model == bool(exact_entropy_model):
        return
    needs, has = _with_article(entropy_model_name(bitstream.exact_entropy_model)), _with_article(
        entropy_model_name(exact_entropy_model))
    raise SLIMModelMismatchError(
        f"{name} (.slim version {bitstream.version}) needs {needs}, but this decompressor has {has}; decode "
        "it with the model that wrote it"
        if bitstream.exact_entropy_model
        else f"{name} (.slim version {bitstream.version}) needs {needs}, but this decompressor has {has}; "
        "decode it with the float model that wrote it (the one this exact model was converted from)"
    )


def check_rate(bitstream: "SLIMBitstream", num_rate_levels: int, name: str = "the .slim file") -> None:
    """Raise :class:`SLIMModelMismatchError` when ``bitstream``'s rate does not fit a decoder with ``num_rate_levels``
    rate levels (0: a fixed-rate model): a file with a rate for a fixed-rate model, one without for a variable-rate
    model, or a rate beyond the model's levels."""
    if bitstream.rate is None and not num_rate_levels:
        return
    if bitstream.rate is None:
        raise SLIMModelMismatchError(
            f"{name} (.slim version {bitstream.version}) was coded at one fixed rate, but this model is variable-rate "
            f"({num_rate_levels} levels); decode it with the fixed-rate model that wrote it"
        )
    if not num_rate_levels:
        raise SLIMModelMismatchError(
            f"{name} was coded by a variable-rate model (at rate {bitstream.rate:g}), but this model codes at one fixed "
            "rate; decode it with the variable-rate model that wrote it"
        )
    if bitstream.rate > num_rate_levels - 1:
        raise SLIMModelMismatchError(
            f"{name} claims rate {bitstream.rate:g}, beyond this model's levels 0…{num_rate_levels - 1}; decode it with "
            "the model that wrote it"
        )


@dataclass
class SLIMBitstream:
    """One compressed image: what a ``.slim`` file holds.

    Args:
        height, width: size of the original image in pixels (the decoder crops back to it).
        fingerprint: identifies the decompressor weights that can decode ``payload``.
        caption: the RoI-focused caption (may be empty).
        payload: the entropy-coded latent.
        exact_entropy_model: the payload was written by an exact (integer) entropy model.
        version: format version; ``None`` picks the one the file needs (3 with a rate, else 2 for an exact entropy
            model, else 1).
        rate: the rate level a variable-rate model coded the payload at (a multiple of 1/16); ``None`` for the
            files of fixed-rate models.
    """

    height: int
    width: int
    fingerprint: bytes
    caption: str
    payload: bytes
    exact_entropy_model: bool = False
    version: Optional[int] = None
    rate: Optional[float] = None

    def __post_init__(self):
        self.exact_entropy_model = bool(self.exact_entropy_model)
        if self.version is None:
            self.version = 3 if self.rate is not None else 2 if self.exact_entropy_model else 1
        if self.version not in SUPPORTED_VERSIONS:
            raise SLIMBitstreamError(f"unsupported .slim format version {self.version}")
        if self.version == 1 and self.exact_entropy_model:
            raise SLIMBitstreamError(".slim version 1 cannot mark an exact entropy model; use version 2")
        if self.version == 3 and self.rate is None:
            raise SLIMBitstreamError(".slim version 3 is the format of variable-rate files: give the rate")
        if self.rate is not None:
            if self.version < 3:
                raise SLIMBitstreamError(f".slim version {self.version} cannot carry a rate; use version 3")
            try:
                units = float(self.rate) * RATE_STEPS
            except (TypeError, ValueError):
                raise SLIMBitstreamError(f"rate must be a number (a rate level), got {self.rate!r}") from None
            if not (0 <= units <= MAX_RATE_UNITS and units == int(units)):
                raise SLIMBitstreamError(
                    f"rate must be a multiple of 1/{RATE_STEPS} in 0…{MAX_RATE_UNITS / RATE_STEPS}, got {self.rate!r}"
                )
            self.rate = units / RATE_STEPS
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise SLIMBitstreamError(f"image {name} must be an integer in 1…{MAX_SIDE}, got {value!r}")
        if not isinstance(self.fingerprint, bytes) or len(self.fingerprint) != FINGERPRINT_BYTES:
            raise SLIMBitstreamError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
        if not isinstance(self.payload, (bytes, bytearray)):
            raise SLIMBitstreamError("payload must be bytes")
        self.payload = bytes(self.payload)

    @property
    def flags(self) -> int:
        """The flags byte of versions 2 and 3."""
        return (FLAG_EXACT_ENTROPY_MODEL if self.exact_entropy_model else 0) | (
            FLAG_VARIABLE_RATE if self.rate is not None else 0
        )

    @property
    def entropy_model(self) -> str:
        """Which entropy model decodes the payload, in words (``slim info``)."""
        return entropy_model_name(self.exact_entropy_model)

    # ------------------------------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        caption = compress_caption(self.caption)
        if len(caption) > MAX_CAPTION_BYTES or len(self.caption.encode("utf-8")) > MAX_CAPTION_BYTES:
            raise SLIMBitstreamError(
                f"caption too long for the .slim format (at most {MAX_CAPTION_BYTES} UTF-8 bytes); shorten it"
            )
        out = bytearray(MAGIC)
        out.append(self.version)
        if self.version >= 2:
            out.append(self.flags)
        if self.rate is not None:
            write_uvarint(int(self.rate * RATE_STEPS), out)
        write_uvarint(self.height, out)
        write_uvarint(self.width, out)
        out += self.fingerprint
        write_uvarint(len(caption), out)
        out += caption
        write_uvarint(len(self.payload), out)
        out += self.payload
        out += struct.pack("<I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview]) -> "SLIMBitstream":
        data = bytes(data)
        if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
            raise SLIMBitstreamError("not a .slim file: it does not start with the magic bytes 'SLIM'")
        if len(data) < len(MAGIC) + 1:
            raise SLIMBitstreamError("truncated .slim data: it ends before the format version")
        version = data[len(MAGIC)]
        if version not in SUPPORTED_VERSIONS:
            raise SLIMBitstreamError(
                f"unsupported .slim format version {version} (this slim-diffusers reads {SUPPORTED_VERSIONS}); "
                "upgrade slim-diffusers"
            )
        if len(data) > MAX_FILE_BYTES:
            raise SLIMBitstreamError(f"not a .slim file: {len(data)} bytes is larger than any valid one")
        if len(data) < len(MAGIC) + 1 + 4:
            raise SLIMBitstreamError("truncated .slim data: too short to hold a header and checksum")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) != crc:
            raise SLIMBitstreamError("corrupt or truncated .slim data: CRC-32 mismatch; fetch the file again")

        pos = len(MAGIC) + 1
        flags = 0
        if version >= 2:
            if pos >= len(body):
                raise SLIMBitstreamError("truncated .slim data: it ends before the flags")
            flags, pos = body[pos], pos + 1
            if version == 2 and flags & FLAG_VARIABLE_RATE:
                raise SLIMBitstreamError(
                    "corrupt .slim data: a version 2 file with the variable-rate flag (bit 1), which only version 3 "
                    "files carry"
                )
            if flags & ~KNOWN_FLAGS[version]:
                raise SLIMBitstreamError(
                    f"unsupported .slim flags 0x{flags:02x} (this slim-diffusers knows 0x{KNOWN_FLAGS[version]:02x} in "
                    f"version {version}); upgrade slim-diffusers"
                )
        if version == 3 and not flags & FLAG_VARIABLE_RATE:
            raise SLIMBitstreamError(
                "corrupt .slim data: a version 3 file without the variable-rate flag (bit 1); version 3 files carry a rate"
            )
        rate = None
        if flags & FLAG_VARIABLE_RATE:
            units, pos = read_uvarint(body, pos, "rate")
            if units > MAX_RATE_UNITS:
                raise SLIMBitstreamError(f"corrupt .slim data: rate {units / RATE_STEPS:g} is out of range")
            rate = units / RATE_STEPS
        height, pos = read_uvarint(body, pos, "height")
        width, pos = read_uvarint(body, pos, "width")
        if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
            raise SLIMBitstreamError(f"corrupt .slim data: image size {height}×{width} is out of range")
        if pos + FINGERPRINT_BYTES > len(body):
            raise SLIMBitstreamError("truncated .slim data: it ends inside the model fingerprint")
        fingerprint = body[pos : pos + FINGERPRINT_BYTES]
        pos += FINGERPRINT_BYTES
        caption_len, pos = read_uvarint(body, pos, "caption length")
        if caption_len > MAX_CAPTION_BYTES or pos + caption_len > len(body):
            raise SLIMBitstreamError(f"corrupt .slim data: caption length {caption_len} is out of range")
        caption = decompress_caption(body[pos : pos + caption_len])
        pos += caption_len
        payload_len, pos = read_uvarint(body, pos, "payload length")
        if pos + payload_len != len(body):
            raise SLIMBitstreamError(
                f"corrupt .slim data: payload length {payload_len} does not match the {len(body) - pos} bytes present"
            )
        return cls(
            height=height,
            width=width,
            fingerprint=fingerprint,
            caption=caption,
            payload=body[pos:],
            exact_entropy_model=bool(flags & FLAG_EXACT_ENTROPY_MODEL),
            version=version,
            rate=rate,
        )

    # ------------------------------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> int:
        """Write atomically (a half-written file never appears under ``path``); return the bytes written."""
        data = self.to_bytes()
        write_atomically(path, data)
        return len(data)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "SLIMBitstream":
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise SLIMBitstreamError(f"{path}: {size} bytes is larger than any valid .slim file")
        with open(path, "rb") as f:
            data = f.read()
        try:
            return cls.from_bytes(data)
        except SLIMBitstreamError as err:
            raise SLIMBitstreamError(f"{path}: {err}") from None

    # ------------------------------------------------------------------------------------------ rate
    @property
    def num_bytes(self) -> int:
        """Size of the whole file: header, caption, payload and CRC."""
        return len(self.to_bytes())

    @property
    def bits_per_pixel(self) -> float:
        return 8 * self.num_bytes / (self.height * self.width)

    @property
    def caption_bits(self) -> int:
        return 8 * len(compress_caption(self.caption))
