"""Video pipelines: sources (files, folders, streams, cameras, GStreamer), the inference loop, sinks,
and the ``PipelineManager`` that the HTTP routes, the MQTT commands and the runtime share. What a
pipeline runs (``PipelineSpec``) is declared in ``edge_agent.pipeline_spec``, beside the settings that
validate ``[[pipelines.streams]]``."""
