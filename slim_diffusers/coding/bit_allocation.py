"""Where the bits go: per-position bit allocation of a coded latent (paper Fig. 6).

Bits are read from the entropy model itself: the payload is decoded, and each decoded symbol costs
``-log2`` of the probability the model gave it. A position of the coded latent ``y`` gets the bits of all its
channels plus an equal share of the bits of the hyper-latent position above it (each hyper-latent
position covers 4×4 positions of ``y``), so the map sums to the payload size up to the coder's overhead.
"""

from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.decompressor import SLIMDecompressor
from ..utils.file_utils import write_atomically


@torch.no_grad()
def bit_allocation(decompressor: SLIMDecompressor, payload: bytes, latent_shape: Sequence[int]) -> torch.Tensor:
    """Bits spent at each position of ``y`` (shape ``(H_y, W_y)``, the padded latent divided by the stride).

    The payload is decoded, and the eval-mode codec gives the likelihood of each decoded symbol: it re-quantises
    ``y_hat`` and ``z_hat`` to exactly the symbols that were read.
    """
    coder = decompressor.entropy_coder
    if coder.training:
        raise RuntimeError("bit allocation reads the entropy model as coding uses it: call decompressor.eval() first")
    h, w = int(latent_shape[-2]), int(latent_shape[-1])
    _, z_size = decompressor.code_shapes(h, w)
    decoded = coder.decompress([[payload]], z_size)
    likelihoods = coder(decoded["y_hat"], decoded["z_hat"])["likelihoods"]
    y_bits = -torch.log2(likelihoods["y"]).sum(dim=1)[0]
    z_bits = -torch.log2(likelihoods["z"]).sum(dim=1, keepdim=True)
    share = decompressor.hyper_stride**2
    z_bits = F.interpolate(z_bits, size=y_bits.shape, mode="nearest")[0, 0] / share
    return y_bits + z_bits


def bitstream_bit_allocation(pipe, bitstream) -> Tuple[torch.Tensor, int]:
    """:func:`bit_allocation` of a :class:`~slim_diffusers.SLIMBitstream` with a pipeline's decompressor, and the
    stride in image pixels of one position of ``y`` (VAE stride × compressor stride)."""
    s = pipe.vae_scale_factor
    latent = (-(-bitstream.height // s), -(-bitstream.width // s))
    return bit_allocation(pipe.decompressor, bitstream.payload, latent), s * pipe.decompressor.y_stride


def bits_per_pixel_map(bits: torch.Tensor, stride: int, size: Sequence[int]) -> np.ndarray:
    """Spread each position's bits evenly over the ``stride × stride`` pixels it covers; crop to ``size``.

    ``stride`` is the pixel size of one position of ``y`` (VAE stride × the compressor's stride, 32 for
    SD 2.1), not something to infer from the image size: the coded latent is padded, so its grid can cover
    much more than the image. ``size`` is ``(width, height)`` as PIL gives it. The result is in bits per
    pixel; over an image that needs no padding it sums to ``bits.sum()``.
    """
    width, height = int(size[0]), int(size[1])
    grid = bits.detach().cpu().double().numpy()
    if grid.shape[0] * stride < height or grid.shape[1] * stride < width:
        raise ValueError(
            f"a {grid.shape[0]}×{grid.shape[1]} bit map at stride {stride} covers {grid.shape[1] * stride}×"
            f"{grid.shape[0] * stride} pixels, less than the {width}×{height} image; is the stride right?"
        )
    return np.kron(grid, np.ones((stride, stride)))[:height, :width] / (stride * stride)


def draw_bit_allocation(image, bits: torch.Tensor, path, stride: int, title: str = "") -> np.ndarray:
    """Overlay the bit map on the decoded ``image`` (paper Fig. 6), save it to ``path``; return the map (bpp)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = image.size
    per_pixel = bits_per_pixel_map(bits, stride, image.size)
    fig, ax = plt.subplots(figsize=(6, 6 * height / width))
    ax.imshow(np.asarray(image))
    overlay = ax.imshow(per_pixel, cmap="inferno", alpha=0.6)
    fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.04, label="bits per pixel")
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    try:
        write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
    return per_pixel
