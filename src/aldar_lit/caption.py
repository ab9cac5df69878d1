"""Caption a folder of images with a vision LLM.  python -m aldar_lit.caption input_dir=/path/to/renders

The API key comes from the OPENAI_API_KEY environment variable only. `dry_run=true` lists what
would be captioned and the estimated cost without calling the API.
"""

import hydra
from omegaconf import DictConfig

from aldar_lit.data.captioning import run_captioning
from aldar_lit.data.prep_config import register_prep_configs


@hydra.main(version_base="1.3", config_path="../../conf", config_name="caption")
def main(cfg: DictConfig) -> None:
    run_captioning(cfg)


if __name__ == "__main__":
    register_prep_configs()
    main()
