"""Training: the SDXL LoRA LightningModule, its loss and conditioning, and the `train.py` entry."""
