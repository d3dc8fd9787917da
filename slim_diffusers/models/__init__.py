"""SLIM's components, one per file: :class:`SLIMCompressor`, :class:`SLIMDecompressor`, :class:`SLIMControlNet`."""

from ..utils.import_utils import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "SLIMCompressor": "slim_diffusers.models.compressor",
        "SLIMCompressorOutput": "slim_diffusers.models.compressor",
        "SLIMControlNet": "slim_diffusers.models.controlnet",
        "SLIMDecompressor": "slim_diffusers.models.decompressor",
        "SLIMDecompressorOutput": "slim_diffusers.models.decompressor",
    },
    globals(),
)
