"""VAE and discriminator training, callable without Ray: `settings` (`TrainSettings`, every loss weight and
schedule with Open-Sora's defaults), `ema` (the exponential moving average of the VAE's weights), and `steps`
(`VAETrainer`, one generator and one discriminator update per batch, built on the losses in `vae.losses`)."""
