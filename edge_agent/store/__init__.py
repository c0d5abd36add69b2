"""The model store: ONNX models and their manifests on disk, imported, revised and evicted atomically."""
