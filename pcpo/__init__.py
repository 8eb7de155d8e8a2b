"""PCPO benchmark: RL alignment of text-to-image diffusion and flow models."""
__version__ = "0.1.0"
