"""Turn a story into a storyboard with a trained LoRA.  Example: python infer.py lora.path=outputs/train/<run>/lora"""

import sys

import hydra
from omegaconf import DictConfig

from aldar_lit.config.infer import register_infer_configs
from aldar_lit.redaction import refuse_secret_overrides
from aldar_lit.user_errors import reported_briefly


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> float:
    from aldar_lit.pipelines.storyboard import run  # torch loads only for a job: --help and --cfg are quick

    with reported_briefly():
        return run(cfg)


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:], "OPENAI_API_KEY")  # before Hydra writes .hydra/
    register_infer_configs()
    main()
