"""The composed Hydra configs: recipes say what the technical justification says, bad values fail naming their key."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import partial

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from aldar_lit.config import ConfigError, TrainConfig, register_configs, to_schema, to_train_config
from aldar_lit.config.evaluate import register_evaluate_configs, to_eval_config
from aldar_lit.config.infer import register_infer_configs, to_infer_config
from aldar_lit.config.prep import CaptionConfig, register_prep_configs
from aldar_lit.redaction import secret_overrides
from conftest import REPO_ROOT


def compose_train(*overrides: str) -> TrainConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/unused", *overrides])
    return to_train_config(cfg)


def test_aldar_kose_experiment_is_the_technical_justifications_recipe() -> None:
    config = compose_train("experiment=aldar_kose", "data.root=/data/renders")
    assert config.model.pretrained == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (config.lora.rank, config.lora.alpha, config.lora.train_text_encoders) == (64, 64.0, True)
    assert config.lora.unet_targets == ["to_q", "to_k", "to_v", "to_out.0"]
    assert config.lora.text_encoder_targets == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert (config.optim.unet_lr, config.optim.text_encoder_lr) == (1e-4, 5e-5)
    assert config.data.batch_size == 4 and config.data.resolution == 1024
    assert config.trainer["precision"] == "bf16-mixed" and config.trainer["max_steps"] == 1000
    assert config.data.trigger == "aldar_kose_man"


def test_lr_sweep_runs_the_technical_justifications_three_pairs_the_recipes_one_named_recipe() -> None:
    """lr_pair=recipe, not "seed", which on the command line read as a random seed."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        sweep = compose("train", overrides=["experiment=lr_sweep", "data.root=/data/renders"], return_hydra_config=True)
    choices = sweep.hydra.sweeper.params.lr_pair.split(",")
    pairs = {choice: compose_train("experiment=lr_sweep", "data.root=/data/renders", f"lr_pair={choice}").optim
             for choice in choices}
    assert {choice: (optim.unet_lr, optim.text_encoder_lr) for choice, optim in pairs.items()} == {
        "high": (5e-4, 1e-4), "recipe": (1e-4, 5e-5), "low": (5e-5, 1e-5)}
    assert (sweep.optim.unet_lr, sweep.optim.text_encoder_lr) == (1e-4, 5e-5)  # without a choice: the recipe's


def test_optimizer_and_schedule_are_selectable() -> None:
    config = compose_train("experiment=quickstart", "optim=adamw8bit", "optim/scheduler=cosine")
    assert config.optim.optimizer["_target_"] == "bitsandbytes.optim.AdamW8bit"
    assert config.optim.scheduler["name"] == "cosine"
    assert config.optim.unet_lr == 1e-3  # the experiment's value survives the group swap


def test_quickstart_is_offline_and_cpu() -> None:
    config = compose_train("experiment=quickstart")
    assert config.model.random_init == "tiny" and config.data.demo is not None
    assert config.trainer["accelerator"] == "cpu" and config.trainer["precision"] == "32-true"


def test_missing_data_root_names_the_key() -> None:
    with pytest.raises(Exception, match="data.root"):
        compose_train("experiment=aldar_kose")


@pytest.mark.parametrize(
    ("override", "key"),
    [("lora.alpha=0", "lora.alpha"), ("lora.dropout=1.5", "lora.dropout"), ("optim.unet_lr=-1", "optim.unet_lr"),
     ("data.resolution=100", "data.resolution"), ("data.batch_size=0", "data.batch_size"),
     ("objective.min_snr_gamma=0", "objective.min_snr_gamma"), ("lora.unet_targets=[]", "lora.unet_targets"),
     ("checkpoint.every_n_train_steps=0", "checkpoint.every_n_train_steps"), ("lora.rank=-1", "lora.rank")],
)
def test_bad_values_name_their_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        compose_train("experiment=quickstart", override)


@pytest.mark.parametrize(
    ("override", "key", "choices"),
    [("lora.init=xavier", "lora.init", "[default, gaussian, pissa, olora]"),
     ("objective.prediction_type=sample", "objective.prediction_type", "[epsilon, v_prediction]"),
     ("data.crop=diagonal", "data.crop", "[center, random]"),
     ("model.dtype=float8", "model.dtype", "[float32, bfloat16, float16]"),
     ("data.on_bad_file=ignore", "data.on_bad_file", "[skip, error]")],
)
def test_a_bad_choice_fails_at_composition_naming_the_key_and_the_choices(override: str, key: str,
                                                                          choices: str) -> None:
    """Choices are Enum fields: Hydra refuses a value outside them while composing, before any schema check runs."""
    with pytest.raises(ConfigCompositionException, match=f"^Error merging override {key}=") as failure:
        compose_train("experiment=quickstart", override)
    assert f"expected one of {choices}" in str(failure.value.__cause__)
    assert f"full_key: {key}" in str(failure.value.__cause__)


def test_fused_optimizer_with_clipping_under_mixed_precision_fails_before_training() -> None:
    with pytest.raises(ConfigError, match="^optim.optimizer.fused: .*gradient_clip_val=null"):
        compose_train("experiment=quickstart", "+optim.optimizer.fused=true", "trainer.precision=bf16-mixed")
    unclipped = compose_train("experiment=quickstart", "+optim.optimizer.fused=true", "trainer.precision=bf16-mixed",
                              "trainer.gradient_clip_val=null")
    assert unclipped.optim.optimizer["fused"] is True


def test_progress_bar_reads_metrics_every_n_steps_only(tmp_path) -> None:
    from lightning.pytorch.callbacks import TQDMProgressBar

    from aldar_lit.training.run import build_trainer

    trainer = build_trainer(compose_train("experiment=quickstart", "progress_every_n_steps=25"), tmp_path, [])
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    assert trainer.progress_bar_callback.refresh_rate == 25
    with pytest.raises(ConfigError, match="^progress_every_n_steps: "):
        compose_train("experiment=quickstart", "progress_every_n_steps=0")


def test_a_data_root_under_the_demo_data_fails_with_the_command_that_trains_on_it(tmp_path) -> None:
    images = tmp_path / "my_images"
    with pytest.raises(ConfigError, match=re.escape(f"to train on your images: python train.py experiment=quickstart "
                                                    f"data=folder data.root={images}")):
        compose_train("experiment=quickstart", f"data.root={images}")
    assert not images.exists()
    config = compose_train("experiment=quickstart", "data=folder", f"data.root={images}")
    assert config.data.demo is None and config.data.root == str(images) and config.data.resolution == 64
    moved = compose_train("experiment=quickstart", f"data.demo.dir={tmp_path / 'demo'}")  # the demo's own folder
    assert moved.data.root == str(tmp_path / "demo")


def test_a_misspelt_key_appended_with_plus_fails_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^lora\.rnak: not a key of the schema; did you mean lora\.rank\?"):
        compose_train("experiment=quickstart", "+lora.rnak=8")
    with pytest.raises(ConfigError, match=r"^data\.demo\.sizee: .*did you mean data\.demo\.size\?"):
        compose_train("experiment=quickstart", "+data.demo.sizee=64")
    with pytest.raises(ConfigError, match=r"^api_kee: not a key of the schema; TrainConfig has model, lora"):
        compose_train("experiment=quickstart", "+api_kee=1")
    # free-form mappings take any key: they are the arguments of lightning.Trainer and of the optimizer factory
    config = compose_train("experiment=quickstart", "+trainer.accumulate_grad_batches=2", "+optim.optimizer.amsgrad=true")
    assert config.trainer["accumulate_grad_batches"] == 2 and config.optim.optimizer["amsgrad"] is True


@pytest.mark.parametrize(("config_name", "register", "convert", "overrides", "message"), [
    ("infer", register_infer_configs, to_infer_config, ["paths.output_dir=/tmp/unused", "+story.llm.modle=x"],
     r"^story\.llm\.modle: .*did you mean story\.llm\.model\?"),
    ("evaluate", register_evaluate_configs, to_eval_config, ["paths.output_dir=/tmp/unused", "+suite.seedz=[1]"],
     r"^suite\.seedz: .*did you mean suite\.seeds\?"),
    ("caption", register_prep_configs, partial(to_schema, schema=CaptionConfig, schema_name="caption_schema"),
     ["input_dir=/tmp/unused", "+overwite=true"], r"^overwite: .*did you mean overwrite\?"),
])
def test_every_tool_rejects_an_appended_unknown_key(config_name, register, convert, overrides, message) -> None:
    register()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        convert(cfg)


SECRET_OVERRIDES = [  # entry point, override, the environment variable the refusal must name
    (["train.py", "experiment=quickstart"], "+logger.wandb.settings.api_key", "WANDB_API_KEY"),
    (["train.py", "experiment=quickstart"], "+api_key", "WANDB_API_KEY"),
    (["evaluate.py"], "++wandb.api_key", "WANDB_API_KEY"),
    (["-m", "aldar_lit.caption", "input_dir=."], "+api_key", "OPENAI_API_KEY"),
    (["-m", "aldar_lit.curate", "input_dir=.", "output_dir=kept"], "+hf_token", "HF_TOKEN"),
    (["infer.py"], "+story.llm.api_key", "OPENAI_API_KEY"),
]


@pytest.mark.parametrize(("command", "override", "env_var"), SECRET_OVERRIDES)
def test_a_key_on_the_command_line_is_refused_before_anything_is_written(tmp_path, command, override, env_var):
    secret = "sk-cli-DO-NOT-WRITE-5d1e"
    script = [str(REPO_ROOT / command[0]), *command[1:]] if command[0].endswith(".py") else command
    result = subprocess.run([sys.executable, *script, f"{override}={secret}", "hydra.run.dir=run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"{override}=...: set {env_var} in the environment instead" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # no run dir, no .hydra/, no log


def test_only_secret_looking_keys_are_refused() -> None:
    argv = ["-m", "--cfg", "job", "max_tokens=300", "model.tokenizer=x", "data.root=/tokens", "+openai_token=a",
            "~password", "++hydra.job.env_set.WANDB_API_KEY=b", "data.cache_dir=/secrets", "+db.password=c"]
    assert secret_overrides(argv) == ["+openai_token", "++hydra.job.env_set.WANDB_API_KEY", "+db.password"]
