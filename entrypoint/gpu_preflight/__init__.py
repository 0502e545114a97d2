"""gpu-preflight: decide what LLM this GPU machine can serve, and how, before anything runs out of memory."""

__version__ = "0.1.0"
