"""Train a character LoRA on SDXL.  Example: python train.py experiment=quickstart  (installed: aldar-train)"""

from aldar_lit.cli import train

if __name__ == "__main__":
    train()
