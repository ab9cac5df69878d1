"""Compare baseline / simple / ref_guided storyboards with identity metrics and bootstrap CIs.
Example: python evaluate.py lora.path=outputs/train/<run>/lora reference_images=data/aldar_kose"""

import sys

import hydra
from omegaconf import DictConfig

from aldar_lit.config.evaluate import register_evaluate_configs
from aldar_lit.redaction import refuse_secret_overrides
from aldar_lit.user_errors import reported_briefly


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from aldar_lit.evaluation.run import run  # torch loads only for a job: --help and --cfg are quick

    with reported_briefly():
        run(cfg)


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:], "WANDB_API_KEY")  # before Hydra writes .hydra/
    register_evaluate_configs()
    main()
