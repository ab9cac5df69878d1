"""Configuration has one source of truth: YAML holds presets and deltas, the schema holds the defaults."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.loggers import WandbLogger
from omegaconf import Container, DictConfig, OmegaConf

from aldar_lit.config import (TRIGGER, ClipConfig, DataConfig, Dtype, LoraConfig, ModelConfig, OptimConfig,
                              PathsConfig, ScorerConfig, TrainConfig, WandbConfig, as_plain_dict)
from aldar_lit.config.evaluate import EvalConfig
from aldar_lit.config.infer import AdaptersConfig, InferConfig, QAConfig
from aldar_lit.config.prep import CaptionConfig, CurateConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
SRC = Path(__file__).resolve().parents[1] / "src"
TOOL_SCHEMAS = {"train": TrainConfig, "infer": InferConfig, "evaluate": EvalConfig, "caption": CaptionConfig,
                "curate": CurateConfig}
# The groups whose options compose into a schema node. Not checked: experiment/ and lr_pair/ (named recipes and sweep
# choices that pin every value they stand for), trainer/, logger/, optim/scheduler/, hydra/ (free-form `_target_`
# specs: no schema default).
GROUP_SCHEMAS = {"model": ModelConfig, "lora": LoraConfig, "data": DataConfig, "scorer": ScorerConfig,
                 "qa": QAConfig, "adapters": AdaptersConfig, "paths": PathsConfig, "optim": OptimConfig,
                 "callbacks": TrainConfig}


def _body(path: Path) -> tuple[dict[str, Any], list[str]]:
    """A YAML option's own values and the same-group options its defaults list composes it on."""
    body = yaml.safe_load(path.read_text()) or {}
    entries = body.pop("defaults", [])  # a tool's also names its schema and its groups: those are not parents
    parents = [entry for entry in entries if isinstance(entry, str) and path.with_name(f"{entry}.yaml").is_file()]
    body.pop("hydra", None)  # Hydra's own settings (run dir, chdir): no schema of ours
    return body, parents


def _base(path: Path, schema: type) -> DictConfig:
    """What the option's node holds without the option: the schema's defaults, then its parent options."""
    base = OmegaConf.structured(schema)
    for parent in _body(path)[1]:
        parent_path = path.with_name(f"{parent}.yaml")
        base = OmegaConf.merge(_base(parent_path, schema), _body(parent_path)[0])
    return base


def _repeats(values: dict[str, Any], base: DictConfig, prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        if key not in base:
            continue  # a key the schema lacks fails at composition (tests/test_config.py)
        node = base._get_node(key)
        if isinstance(value, dict) and isinstance(node, DictConfig) and dataclasses.is_dataclass(
                OmegaConf.get_type(node)):
            found += _repeats(value, node, f"{prefix}{key}.")
            continue
        default = OmegaConf.to_container(node, resolve=False, enum_to_str=True) if isinstance(node, Container) \
            else node._value()  # unresolved, as the YAML writes it
        if isinstance(default, Enum):
            default = default.name  # how YAML names an Enum value
        if value == default:
            found.append(f"{prefix}{key}: {value!r}")
    return found


def repeated_defaults(conf: Path) -> dict[str, list[str]]:
    """Every YAML value under `conf` that only repeats what its node holds without it, by file."""
    options = [(conf / f"{tool}.yaml", schema) for tool, schema in TOOL_SCHEMAS.items()]
    options += [(path, schema) for group, schema in GROUP_SCHEMAS.items() for path in sorted((conf / group).glob("*.yaml"))]
    found = {}
    for path, schema in options:
        values, _ = _body(path)
        repeats = _repeats(values, _base(path, schema))
        if repeats:
            found[str(path.relative_to(conf))] = repeats
    return found


def test_no_yaml_value_repeats_its_schema_default() -> None:
    assert repeated_defaults(CONF) == {}


def test_the_check_finds_a_repeated_default(tmp_path) -> None:
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "default.yaml").write_text("max_attempts: 3\nseed: 7\nclip: {model_name: ViT-L-14}\n")
    (tmp_path / "qa" / "tiny.yaml").write_text("defaults: [default]\nmax_attempts: 2\nseed: 7\n")
    for tool in TOOL_SCHEMAS:
        (tmp_path / f"{tool}.yaml").write_text("defaults: [_self_]\n")
    assert repeated_defaults(tmp_path) == {"qa/default.yaml": ["max_attempts: 3", "clip.model_name: 'ViT-L-14'"],
                                           "qa/tiny.yaml": ["seed: 7"]}


# Where the trigger token may be written besides its one home: prompts, which are text that uses it.
PROMPT_KEYS = {"data/folder.yaml": "validation_prompts", "evaluate.yaml": "suite.prompts"}
TRIGGER_HOME = Path("aldar_lit/config/shared.py")


def _yaml_mentions(node: Any, token: str, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [hit for key, value in node.items() for hit in _yaml_mentions(value, token, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [hit for value in node for hit in _yaml_mentions(value, token, prefix)]
    return [prefix.rstrip(".")] if isinstance(node, str) and token in node else []


def trigger_definitions(src: Path, conf: Path, token: str = TRIGGER) -> list[str]:
    """Every place outside its home that writes the trigger token: Python string literals and YAML values."""
    found = []
    for path in sorted(src.rglob("*.py")):
        if path.relative_to(src) == TRIGGER_HOME:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and token in node.value:
                found.append(f"{path.relative_to(src)}:{node.lineno}")
    for path in sorted(conf.rglob("*.yaml")):
        rel = str(path.relative_to(conf))
        if rel.startswith("story/"):
            continue  # scene lists: story text
        found += [f"{rel}: {key}" for key in _yaml_mentions(yaml.safe_load(path.read_text()), token)
                  if key != PROMPT_KEYS.get(rel)]
    return found


def test_the_trigger_token_has_one_home() -> None:
    home = (SRC / TRIGGER_HOME).read_text()
    assert home.count(f'"{TRIGGER}"') == 1 and f'TRIGGER = "{TRIGGER}"' in home
    assert trigger_definitions(SRC, CONF) == []


def test_the_trigger_check_finds_a_second_definition(tmp_path) -> None:
    (tmp_path / "src" / "aldar_lit" / "config").mkdir(parents=True)
    (tmp_path / "src" / "aldar_lit" / "config" / "shared.py").write_text(f'TRIGGER = "{TRIGGER}"\n')
    (tmp_path / "src" / "aldar_lit" / "tool.py").write_text(f'def run(trigger="{TRIGGER}"): ...\n')
    (tmp_path / "conf" / "story").mkdir(parents=True)
    (tmp_path / "conf" / "story" / "tale.yaml").write_text(f"scenes: [{TRIGGER} rides]\n")
    (tmp_path / "conf" / "evaluate.yaml").write_text(f"suite: {{trigger: {TRIGGER}, prompts: [{TRIGGER} smiles]}}\n")
    assert trigger_definitions(tmp_path / "src", tmp_path / "conf") == ["aldar_lit/tool.py:1",
                                                                          "evaluate.yaml: suite.trigger"]


def test_a_configs_plain_dict_loads_back_with_weights_only(tmp_path) -> None:
    """Choices are Enum members in the dataclasses; a checkpoint's hyper_parameters must hold their plain values."""
    import torch

    model = ModelConfig(dtype="bfloat16")
    assert model.dtype is Dtype.bfloat16
    torch.save({"model": as_plain_dict(model)}, tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["model"]["dtype"] == "bfloat16"


def test_wandb_is_written_the_same_way_for_training_and_evaluation() -> None:
    """evaluate.py's `wandb.*` are keys of Lightning's WandbLogger (which train.py's `logger.wandb.*` is passed to),
    with the defaults that training's logger preset gives them."""
    shared = {f.name: f.default for f in dataclasses.fields(WandbConfig) if f.name != "enabled"}
    assert set(shared) <= set(inspect.signature(WandbLogger.__init__).parameters)
    training = yaml.safe_load((CONF / "logger" / "default.yaml").read_text())["wandb"]
    assert {key: training.get(key) for key in shared} == shared


def test_the_scorer_and_qa_name_their_clip_with_one_schema() -> None:
    """`scorer.clip.*` and `qa.clip.*`: one sub-config (each tool keeps its own preset of it)."""
    assert type(ScorerConfig().clip) is type(QAConfig().clip) is ClipConfig
