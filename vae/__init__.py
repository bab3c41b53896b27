from vae.autoencoder_2d import AutoEncoder2D, AutoEncoderConfig
from vae.checkpoint import load_state_dict_file
from vae.distributions import DiagonalGaussianDistribution
from vae.presets import PRESETS, load_model

__all__ = [
    "AutoEncoder2D",
    "AutoEncoderConfig",
    "DiagonalGaussianDistribution",
    "PRESETS",
    "load_model",
    "load_state_dict_file",
]
