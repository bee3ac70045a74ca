"""The official PyTorch NVAE: its checkpoints, its module layout, parity checks against it,
and `.keras` files of keras_nvae < 0.2 (stored in its layout)."""
