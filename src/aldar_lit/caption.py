"""Caption a folder of images with a vision LLM.  python -m aldar_lit.caption input_dir=/path/to/renders

The API key comes from the OPENAI_API_KEY environment variable only. `dry_run=true` lists what
would be captioned and the estimated cost without calling the API. Exits non-zero if any image failed
(each is listed with its reason in caption_report.json).
"""

import sys

import hydra
from omegaconf import DictConfig

from aldar_lit.config.prep import register_prep_configs
from aldar_lit.redaction import refuse_secret_overrides
from aldar_lit.user_errors import reported_briefly


@hydra.main(version_base="1.3", config_path="../../conf", config_name="caption")
def main(cfg: DictConfig) -> None:
    from aldar_lit.data.captioning import run_captioning  # openai loads only for a job: --help and --cfg are quick

    with reported_briefly():
        report = run_captioning(cfg)
    if report.failures:  # a scheduler or a `&&` chain must not take a partly captioned folder for a finished one
        raise SystemExit(f"error: {len(report.failures)} of {report.images} images failed; the report lists each "
                         "and why")


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:], "OPENAI_API_KEY")  # before Hydra writes .hydra/
    register_prep_configs()
    main()
