"""Visual attention sinks in large multimodal models, on TransformerLens."""
