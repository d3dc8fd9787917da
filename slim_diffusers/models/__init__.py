from .compressor import SLIMCompressor, SLIMCompressorOutput
from .controlnet import SLIMControlNet
from .decompressor import SLIMDecompressor, SLIMDecompressorOutput

__all__ = ["SLIMCompressor", "SLIMCompressorOutput", "SLIMControlNet", "SLIMDecompressor", "SLIMDecompressorOutput"]
