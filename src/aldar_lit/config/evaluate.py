"""Typed evaluation configuration (`conf/evaluate.yaml` composes into `evaluate_schema`), validated before work.

Generation settings use the storyboard's own config types, so a mode evaluated here is generated exactly
as `infer.py` would generate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from aldar_lit.config.core import check_choices, require, to_schema
from aldar_lit.config.infer import (MODES, AdaptersConfig, ConsistencyConfig, GenerationConfig, IdentityConfig,
                                   LoraSourceConfig, QAConfig)
from aldar_lit.config.shared import TRIGGER, ImageDetail, PathsConfig, ScorerConfig, WandbConfig
from aldar_lit.config.train import ModelConfig, random_weight_parts

SHARED_SUFFIX = "+shared"  # an evaluation mode with consistent self-attention, e.g. simple+shared


class Aspect(StrEnum):  # ViStoryBench's prompt-alignment aspects (vlm_judge.py)
    scene = "scene"
    character_action = "character_action"
    camera = "camera"


def split_mode(mode: str) -> tuple[str, bool]:
    """An evaluation mode as the storyboard mode and whether its frames share self-attention."""
    return mode.removesuffix(SHARED_SUFFIX), mode.endswith(SHARED_SUFFIX)


@dataclass
class SuiteConfig:
    """What is generated: the prompt suite (one story) and/or scene files, each once per seed."""

    prompts: list[str] = field(default_factory=list)
    story_files: list[str] = field(default_factory=list)  # scene lists as infer.py reads them
    # generation.seed of each pass. 10 storyboards per mode: the fewest at which the clustered 95 % interval covers at
    # the nominal rate (0.94-0.95 simulated at intra-storyboard correlations 0.1-0.5; 4 storyboards: 0.88) and the
    # exact sign-flip test can reach p < 0.05 (its smallest two-sided p is 2 / 2^storyboards). See statistics.py.
    seeds: list[int] = field(default_factory=lambda: [1000 * (i + 1) for i in range(10)])
    trigger: str = TRIGGER
    style: str = "3d render, soft cinematic light"

    def __post_init__(self) -> None:
        for index, prompt in enumerate(self.prompts):
            require(isinstance(prompt, str) and bool(prompt.strip()), f"suite.prompts[{index}]",
                     "must be a non-empty string")
        require(len(self.seeds) > 0, "suite.seeds", "must hold at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), "suite.seeds", f"has duplicates: {list(self.seeds)}")


@dataclass
class StatsConfig:
    num_resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.num_resamples >= 100, "stats.num_resamples", f"must be >= 100, got {self.num_resamples}")
        require(0 < self.confidence < 1, "stats.confidence", f"must be in (0, 1), got {self.confidence}")


@dataclass
class StoryMetricsConfig:
    """Story-visualisation measures (evaluation/story_metrics.py): the character crop, character count, style."""

    # character crop = the largest face box (qa.detectors' face detector) grown to the body: heads_wide face widths
    # wide, from half a face above the face to heads_tall face heights below its top; the whole frame without a face
    heads_wide: float = 3.0
    heads_tall: float = 6.0
    expected_characters: int = 1  # faces a frame should hold (character_count_match)
    # ViStoryBench's copy-paste temperature (softmax of the two similarities / T; vistorybench cids_evaluator.py)
    copy_paste_temperature: float = 0.01
    # style embedding for style_consistency: an open_clip architecture + weights (a tag or a local checkpoint file);
    # null: the scorer's CLIP (scorer.clip)
    style_model: Optional[str] = None
    style_pretrained: Optional[str] = None
    # CSD (ViStoryBench's style metric): a CSD checkpoint (e.g. csd_vit-large.pth: backbone.* + last_layer_style) on
    # the open_clip architecture style_model (ViT-L-14 for the published one); its style head replaces CLIP's projection
    style_csd_checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        require(self.heads_wide >= 1 and self.heads_tall >= 1, "story_metrics.heads_wide/heads_tall",
                f"must be >= 1 face size, got {self.heads_wide} / {self.heads_tall}")
        require(self.expected_characters >= 0, "story_metrics.expected_characters",
                f"must be >= 0, got {self.expected_characters}")
        require(self.copy_paste_temperature > 0, "story_metrics.copy_paste_temperature",
                f"must be positive, got {self.copy_paste_temperature}")
        require(self.style_pretrained is None or self.style_model is not None, "story_metrics.style_pretrained",
                "needs story_metrics.style_model")
        if self.style_csd_checkpoint is not None:
            require(self.style_model is not None and self.style_pretrained is None, "story_metrics.style_csd_checkpoint",
                    "needs story_metrics.style_model (the checkpoint's architecture, e.g. ViT-L-14) and no style_pretrained")
            require(Path(self.style_csd_checkpoint).expanduser().is_file(), "story_metrics.style_csd_checkpoint",
                    f"no such file {self.style_csd_checkpoint!r}")


@dataclass
class VlmJudgeConfig:
    """Prompt alignment judged by a vision-language model (evaluation/vlm_judge.py) on ViStoryBench's 0-4 scale.

    Runs when OPENAI_API_KEY is set and `enabled` is true; without the key it is skipped with one log line and a
    note in report.md. Answers are cached in cache_dir (no second charge on a rerun)."""

    enabled: bool = True
    vision_model: str = "gpt-4o"
    base_url: Optional[str] = None  # an OpenAI-compatible server; None: api.openai.com
    aspects: list[Aspect] = field(default_factory=lambda: list(Aspect))
    image_detail: ImageDetail = ImageDetail.low  # high for fine detail
    max_image_side: int = 1024
    max_tokens: int = 300  # the analysis and the score line
    temperature: float = 0.0
    concurrency: int = 4
    max_retries: int = 5  # the openai client's own retries with exponential backoff (429, 5xx, timeouts)
    timeout_s: float = 60.0
    cache_dir: str = "~/.cache/aldar_lit/vlm_judge"
    usd_per_million_input_tokens: float = 2.50  # gpt-4o list prices; set these for other models
    usd_per_million_output_tokens: float = 10.00

    def __post_init__(self) -> None:
        require(bool(self.vision_model), "vlm_judge.vision_model", "must name a model")
        check_choices(self, "vlm_judge")
        require(self.max_image_side >= 64, "vlm_judge.max_image_side", f"must be >= 64, got {self.max_image_side}")
        require(self.max_tokens > 0, "vlm_judge.max_tokens", f"must be positive, got {self.max_tokens}")
        require(self.concurrency >= 1, "vlm_judge.concurrency", f"must be >= 1, got {self.concurrency}")
        require(self.max_retries >= 0, "vlm_judge.max_retries", f"must be >= 0, got {self.max_retries}")
        require(self.timeout_s > 0, "vlm_judge.timeout_s", f"must be positive, got {self.timeout_s}")


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSourceConfig = field(default_factory=LoraSourceConfig)
    modes: list[str] = field(default_factory=lambda: list(MODES))  # each may take +shared (e.g. simple+shared)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(seed=0))  # seed: each suite.seeds
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)  # settings of the `+shared` modes
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    story_metrics: StoryMetricsConfig = field(default_factory=StoryMetricsConfig)
    vlm_judge: VlmJudgeConfig = field(default_factory=VlmJudgeConfig)
    reference_images: Optional[str] = None  # the character's training images (CLIP-I, DINO, identity to training set)
    max_reference_images: int = 32
    # infer.py run dirs whose manifests match a planned storyboard are reused, not regenerated
    frames_from: list[str] = field(default_factory=list)
    sweep_dir: Optional[str] = None  # a training multirun: evaluate every run's lora/ in mode simple
    wandb: WandbConfig = field(default_factory=WandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    progress: bool = False

    def __post_init__(self) -> None:
        require(bool(self.suite.prompts) or bool(self.suite.story_files), "suite.prompts",
                 "the prompt suite is empty and suite.story_files names no story: nothing to evaluate")
        require(len(self.modes) > 0, "modes", "must name at least one mode")
        for mode in self.modes:
            require(split_mode(mode)[0] in MODES, "modes",
                     f"unknown mode {mode!r}; known modes: {list(MODES)}, each also with {SHARED_SUFFIX}")
        require(len(set(self.modes)) == len(self.modes), "modes", f"has duplicates: {list(self.modes)}")
        with_lora = [m for m in self.modes if split_mode(m)[0] != "baseline"]
        if self.sweep_dir is None and with_lora:
            require(self.lora.path is not None, "lora.path", f"modes {with_lora} need an adapter: lora.path=<run>/lora")
        require(self.max_reference_images > 0, "max_reference_images", "must be positive")


    def random_weight_parts(self) -> list[str]:
        """What runs with random weights (the tiny configs): its numbers measure nothing, so nothing is claimed."""
        return random_weight_parts(self.model, self.scorer)


def register_evaluate_configs() -> None:
    ConfigStore.instance().store(name="evaluate_schema", node=EvalConfig)


def to_eval_config(cfg: DictConfig) -> EvalConfig:
    return to_schema(cfg, EvalConfig, "evaluate_schema")
