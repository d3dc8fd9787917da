"""``SLIMPipeline``: both ends of the link."""

from ..utils.import_utils import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {"SLIMPipeline": "slim_diffusers.pipelines.pipeline_slim", "SLIMPipelineOutput": "slim_diffusers.pipelines.pipeline_slim"},
    globals(),
)
