"""Regenerate the golden files of the seeded tiny models: ``python tests/golden/update_golden_seeded.py``.

Two models built in code (:func:`slim_diffusers.testing.tiny_codec` and its exact conversion,
:func:`~slim_diffusers.testing.tiny_exact_codec`), so these files do not depend on the bundled weights: ``.slim``
version 1 files of the floating-point entropy model and version 2 files of the exact one, each with the SHA-256
of the ``ŷ`` it decodes to. The version 2 digests hold on every device (the exact entropy model's guarantee);
the version 1 digests on the machines that wrote them: a version 1 ``ŷ`` is the decoded symbols plus floating-point
means, whose last bits differ between CPU kernels, so its tensor is kept too (``seeded/<name>.y_hat.safetensors``)
and another machine's decode must match it within :data:`Y_HAT_ATOL`. Run it only when the bytes are meant to change and say
so in the commit.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
FILES = HERE / "seeded"
RECORD = HERE / "seeded.json"
SEED = 0
VAE_STRIDE = 8
# (seed, latent height, latent width): two padded-free sizes and one that is padded
LATENTS = [(11, 16, 24), (12, 24, 16), (13, 13, 21)]


# a version 1 ŷ on another CPU: the same symbols, means within float rounding (a wrong symbol is off by 1 or more;
# measured 2026-12-05 with torch's AVX2 kernels against AVX-512's tensors: 1.2e-7)
Y_HAT_ATOL = 1e-3


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().to("cpu").contiguous()
    return sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes() + f"{t.dtype}{tuple(t.shape)}".encode())


def models():
    """``{"float": (compressor, decompressor), "exact": (compressor, exact decompressor)}``, seeded."""
    from slim_diffusers.testing import tiny_codec, tiny_exact_codec

    return {"float": tiny_codec(SEED), "exact": tiny_exact_codec(SEED)}


def latents(seed: int, height: int, width: int) -> torch.Tensor:
    from slim_diffusers.testing import structured_latents

    return structured_latents(1, height, width, seed=seed)


def encode(compressor, decompressor, latent: torch.Tensor) -> bytes:
    from slim_diffusers.coding.bitstream import SLIMBitstream
    from slim_diffusers.coding.latents import compress_latents

    (payload,) = compress_latents(compressor, decompressor, latent)
    h, w = latent.shape[-2:]
    return SLIMBitstream(
        height=h * VAE_STRIDE, width=w * VAE_STRIDE, fingerprint=decompressor.fingerprint(), caption="",
        payload=payload, exact_entropy_model=decompressor.exact_entropy_model,
    ).to_bytes()


@torch.no_grad()
def decoded_y_hat(decompressor, data: bytes) -> torch.Tensor:
    """ŷ of a ``.slim`` file, after the checks a decoder makes on its header."""
    from slim_diffusers.coding.bitstream import SLIMBitstream, check_decode_limit, check_entropy_model

    bitstream = SLIMBitstream.from_bytes(data)
    check_decode_limit(bitstream)
    check_entropy_model(bitstream, decompressor.exact_entropy_model)
    assert bitstream.fingerprint == decompressor.fingerprint(), "written by another model"
    size = (-(-bitstream.height // VAE_STRIDE), -(-bitstream.width // VAE_STRIDE))
    _, z_size = decompressor.code_shapes(*size)
    return decompressor.entropy_coder.decompress([[bitstream.payload]], z_size)["y_hat"]


def main() -> int:
    torch.set_num_threads(1)
    FILES.mkdir(exist_ok=True)
    record = {"seed": SEED, "models": {}, "files": {}}
    for kind, (compressor, decompressor) in models().items():
        record["models"][kind] = {"fingerprint": decompressor.fingerprint().hex()}
        for seed, h, w in LATENTS:
            name = f"tiny_{kind}_{seed}"
            data = encode(compressor, decompressor, latents(seed, h, w))
            (FILES / f"{name}.slim").write_bytes(data)
            record["files"][name] = {
                "model": kind,
                "latent": [seed, h, w],
                "version": data[4],
                "slim_sha256": sha256(data),
                "y_hat_sha256": tensor_sha256(y_hat := decoded_y_hat(decompressor, data)),
            }
            if data[4] == 1:
                save_file({"y_hat": y_hat.contiguous()}, str(FILES / f"{name}.y_hat.safetensors"))
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{len(record['files'])} golden files -> {FILES}, {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
