"""hf_spectral: spectral dynamics of weights for the HuggingFace ecosystem."""
__version__ = "0.1.0"
