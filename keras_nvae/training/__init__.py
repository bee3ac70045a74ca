"""NVAE training: the trainer, guarded steps, weight average, objectives, optimizers,
callbacks, checkpoints and hyper-parameter tuning."""
