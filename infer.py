"""Turn a story into a storyboard with a trained LoRA.  Example: python infer.py lora.path=outputs/train/<run>/lora"""

import hydra
from omegaconf import DictConfig

from aldar_lit.pipelines.config import register_infer_configs
from aldar_lit.pipelines.storyboard import run


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    register_infer_configs()
    main()
