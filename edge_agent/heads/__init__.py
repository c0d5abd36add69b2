"""Task heads: preprocessing into the engine's input, and decoding its raw outputs into results.

Every head reads its per-request options from ``edge_agent.params.InferenceParams``.
"""
