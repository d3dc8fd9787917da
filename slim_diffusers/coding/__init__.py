"""From latents to bytes and back: the ``.slim`` format, the latent codec, where the bits went.

- :mod:`.bitstream` — the ``.slim`` file format (the one place it is parsed)
- :mod:`.latent_codec` — :class:`SLIMLatentCodec`: ELIC's context model, one rANS stream per image
- :mod:`.latents` — compressor + decompressor around the codec: ``compress_latents``, ``decompress_latents``
- :mod:`.bit_allocation` — bits per position of a payload (paper Fig. 6)
- :mod:`.integer_networks` — integer networks of the exact entropy model (bit-identical on every device)
"""

from ..utils.import_utils import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "SLIMBitstream": "slim_diffusers.coding.bitstream",
        "SLIMLatentCodec": "slim_diffusers.coding.latent_codec",
        "compress_latents": "slim_diffusers.coding.latents",
        "decompress_latents": "slim_diffusers.coding.latents",
        "convert_to_exact_entropy_model": "slim_diffusers.coding.latents",
        "estimate_bits": "slim_diffusers.coding.latents",
        "run_codec": "slim_diffusers.coding.latents",
        "bit_allocation": "slim_diffusers.coding.bit_allocation",
    },
    globals(),
)
