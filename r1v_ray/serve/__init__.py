"""Serving checkpoints through an OpenAI-compatible Ray Serve app."""
