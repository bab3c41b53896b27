"""The data path: shards in, clips, latents and scores out; every step usable without Ray."""
