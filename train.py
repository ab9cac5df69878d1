"""Train a character LoRA on SDXL.  Example: python train.py experiment=quickstart"""

import sys

import hydra
from omegaconf import DictConfig

from aldar_lit.config import register_configs
from aldar_lit.redaction import refuse_secret_overrides
from aldar_lit.user_errors import reported_briefly


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from aldar_lit.training.run import run  # torch loads only for a job: --help and --cfg are quick

    with reported_briefly():
        return run(cfg)


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:], "WANDB_API_KEY")  # before Hydra writes .hydra/
    register_configs()
    main()
