"""The model store and what it holds: manifests, importers, loaded models."""
