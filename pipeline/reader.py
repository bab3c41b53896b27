"""The names training code imports: `from pipeline.reader import LatentDataset, collate_latents, load_latent`."""

from pipeline.cache.reader import LatentDataset, collate_latents, load_latent

__all__ = ["LatentDataset", "collate_latents", "load_latent"]
