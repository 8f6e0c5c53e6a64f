"""Runnable examples: ``python -m jaxfuse.examples.<name>``."""
