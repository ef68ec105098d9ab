"""A small text-generation service: a Hugging Face causal LM behind a TGI-compatible HTTP API."""

__version__ = "0.1.0"
