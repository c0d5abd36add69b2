"""Running models: ``Model.run``, the one run path (prepare, forward, decode), ``loading`` (an engine under
a stored model), the ``ModelManager`` of loaded models with their batchers, and the switch to a TensorRT
engine once it is built and checked."""
