"""slim-diffusers: Semantic-based Low-bitrate Image compression for Machines, on diffusers.

The package is laid out as the system is:

- :mod:`slim_diffusers.models` — the components: ``SLIMCompressor``, ``SLIMDecompressor``, ``SLIMControlNet``
- :mod:`slim_diffusers.coding` — the ``.slim`` format, the latent codec (one rANS stream per image), bit maps
- :mod:`slim_diffusers.semantics` — what the machine looks at: Grad-CAM RoI masks and RoI-focused captions
- :mod:`slim_diffusers.pipelines` — ``SLIMPipeline``, both ends of the link
- :mod:`slim_diffusers.training` — the loss, the training module, data, checkpoints (the scripts in ``training/``)
- :mod:`slim_diffusers.evaluation` — rate–accuracy evaluation and BD-rate
- :mod:`slim_diffusers.utils` — image conversion, files, model loading, launch detection

Imports are lazy: ``import slim_diffusers`` is cheap, and the heavy stack (torch, diffusers, compressai)
loads on first use of a name below. diffusers' pipeline loader looks base classes such as ``ModelMixin``
up *on this package* (``model_index.json`` names ``["slim_diffusers", "SLIMCompressor"]``), so they are
exported here too.
"""

from typing import TYPE_CHECKING

from .utils.import_utils import lazy_exports

__version__ = "0.2.0"

__getattr__, __dir__, _names = lazy_exports(
    __name__,
    {
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
        "SLIMDecodeLimitError": "slim_diffusers.errors",
        "SLIMRateControlError": "slim_diffusers.errors",
        "SLIMTargetSizeError": "slim_diffusers.errors",
        "SLIMModelNotFoundError": "slim_diffusers.errors",
        # the bundled toy model: `SLIMPipeline.from_pretrained(toy_model_path())`, or `from_pretrained("toy")`
        "toy_model_path": "slim_diffusers.utils.hub",
        "toy_decode_settings": "slim_diffusers.utils.hub",
        # base classes diffusers' loader resolves on the component's package
        "ModelMixin": "diffusers.models.modeling_utils",
        "ConfigMixin": "diffusers.configuration_utils",
        "DiffusionPipeline": "diffusers.pipelines.pipeline_utils",
    },
    globals(),
)
__all__ = _names + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .coding.bitstream import SLIMBitstream
    from .errors import (SLIMBitstreamError, SLIMDecodeLimitError, SLIMModelMismatchError, SLIMModelNotFoundError,
                         SLIMRateControlError, SLIMTargetSizeError)
    from .models.compressor import SLIMCompressor, SLIMCompressorOutput
    from .models.controlnet import SLIMControlNet
    from .models.decompressor import SLIMDecompressor, SLIMDecompressorOutput
    from .pipelines.pipeline_slim import SLIMPipeline, SLIMPipelineOutput
    from .utils.hub import toy_decode_settings, toy_model_path
