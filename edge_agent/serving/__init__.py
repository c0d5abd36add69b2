"""Running models: ``Model`` (prepare, forward, decode), the ``ModelManager`` of loaded models with their
batchers, and the switch to a TensorRT engine once it is built and checked."""
