from vae.autoencoder_2d import AutoEncoder2D, AutoEncoderConfig
from vae.autoencoder_3d import AutoEncoder3D, AutoEncoder3DConfig
from vae.checkpoint import load_state_dict_file
from vae.conv3d import ChannelChunkConv3D, chunk_conv3d_layers
from vae.diffusers_vae import (
    DIFFUSERS_CLASSES,
    DiffusersVAE,
    DiffusersVAEConfig,
    diffusers_folder_weights,
)
from vae.distributions import DiagonalGaussianDistribution
from vae.latent_normalisation import LatentNormalisation
from vae.presets import PRESETS, PRESETS_3D, load_model
from vae.shipped_weights import SHIPPED, shipped_weights

__all__ = [
    "AutoEncoder2D",
    "AutoEncoderConfig",
    "AutoEncoder3D",
    "AutoEncoder3DConfig",
    "ChannelChunkConv3D",
    "chunk_conv3d_layers",
    "DIFFUSERS_CLASSES",
    "DiffusersVAE",
    "DiffusersVAEConfig",
    "DiagonalGaussianDistribution",
    "LatentNormalisation",
    "PRESETS",
    "PRESETS_3D",
    "SHIPPED",
    "diffusers_folder_weights",
    "load_model",
    "load_state_dict_file",
    "shipped_weights",
]
