"""Video pipelines: sources (files, folders, streams, cameras, GStreamer), the inference loop, sinks,
and the manager that the HTTP and MQTT interfaces share."""
