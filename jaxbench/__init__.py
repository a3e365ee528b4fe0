"""jaxbench: one Flax LLM, trained by the same code on every XLA backend, timed honestly."""

__version__ = "0.1.0"
