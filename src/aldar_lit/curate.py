"""Filter raw renders into a training set.  python -m aldar_lit.curate input_dir=raw/ output_dir=kept/

Drops near-duplicates, blurry and small images (and, optionally, images without a detectable face),
and writes the kept set to <output_dir>/images (train on it with data.root=<output_dir>/images)
with report.json, report.md and contact_sheet.png beside it.
"""

import sys

import hydra
from omegaconf import DictConfig

from aldar_lit.data.curation import run_curation
from aldar_lit.config.prep import register_prep_configs
from aldar_lit.redaction import refuse_secret_overrides
from aldar_lit.user_errors import reported_briefly


@hydra.main(version_base="1.3", config_path="../../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    with reported_briefly():
        run_curation(cfg)


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:], None)  # before Hydra writes .hydra/
    register_prep_configs()
    main()
