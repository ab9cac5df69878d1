"""Train a character LoRA on SDXL.  Example: python train.py experiment=quickstart"""

import hydra
from omegaconf import DictConfig

from aldar_lit.config import register_configs
from aldar_lit.training.run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    register_configs()
    main()
