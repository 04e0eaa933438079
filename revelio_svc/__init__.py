"""Revelio service: interpret diffusion models with sparse autoencoders."""
__version__ = "0.1.0"
