from .pipeline_slim import SLIMPipeline, SLIMPipelineOutput

__all__ = ["SLIMPipeline", "SLIMPipelineOutput"]
