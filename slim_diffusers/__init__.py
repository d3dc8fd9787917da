"""slim-diffusers: Semantic-based Low-bitrate Image compression for Machines, on diffusers.

Imports are lazy: ``import slim_diffusers`` is cheap, and the heavy stack (torch, diffusers, compressai)
loads on first use of a name below. diffusers' pipeline loader looks base classes such as ``ModelMixin``
up *on this package* (``model_index.json`` names ``["slim_diffusers", "SLIMCompressor"]``), so they are
exported here too.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "SLIMCompressor": "slim_diffusers.models.compressor",
    "SLIMCompressorOutput": "slim_diffusers.models.compressor",
    "SLIMDecompressor": "slim_diffusers.models.decompressor",
    "SLIMDecompressorOutput": "slim_diffusers.models.decompressor",
    "SLIMControlNet": "slim_diffusers.models.controlnet",
    "SLIMPipeline": "slim_diffusers.pipelines.pipeline_slim",
    "SLIMPipelineOutput": "slim_diffusers.pipelines.pipeline_slim",
    "SLIMBitstream": "slim_diffusers.coding.bitstream",
    "SLIMBitstreamError": "slim_diffusers.errors",
    "SLIMModelMismatchError": "slim_diffusers.errors",
    # base classes diffusers' loader resolves on the component's package
    "ModelMixin": "diffusers.models.modeling_utils",
    "ConfigMixin": "diffusers.configuration_utils",
    "DiffusionPipeline": "diffusers.pipelines.pipeline_utils",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slim_diffusers' has no attribute {name!r}")


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .coding.bitstream import SLIMBitstream
    from .errors import SLIMBitstreamError, SLIMModelMismatchError
    from .models.compressor import SLIMCompressor, SLIMCompressorOutput
    from .models.controlnet import SLIMControlNet
    from .pipelines.pipeline_slim import SLIMPipeline, SLIMPipelineOutput
    from .models.decompressor import SLIMDecompressor, SLIMDecompressorOutput
