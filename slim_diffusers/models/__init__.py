from .compressor import SLIMCompressor, SLIMCompressorOutput
from .decompressor import SLIMDecompressor, SLIMDecompressorOutput

__all__ = ["SLIMCompressor", "SLIMCompressorOutput", "SLIMDecompressor", "SLIMDecompressorOutput"]
