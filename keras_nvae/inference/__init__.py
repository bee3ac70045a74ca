"""Using a trained NVAE: sampling, encoding, latents, evaluation, FID and export."""
