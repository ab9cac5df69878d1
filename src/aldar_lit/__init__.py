"""aldar_lit: train a character LoRA on SDXL and turn it into consistent storyboards."""

__version__ = "0.1.0"
