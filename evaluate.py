"""Compare baseline / simple / ref_guided storyboards with identity metrics and bootstrap CIs.
Example: python evaluate.py lora.path=outputs/train/<run>/lora reference_images=data/aldar_kose"""

import hydra
from omegaconf import DictConfig

from aldar_lit.evaluation.config import register_evaluate_configs
from aldar_lit.evaluation.run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    register_evaluate_configs()
    main()
