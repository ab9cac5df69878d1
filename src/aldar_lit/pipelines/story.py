"""Story input: a scene list from a YAML/JSON file, or a paragraph split into scenes by an LLM."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.hydra_config import HydraConfig

from aldar_lit.config.infer import LLMConfig, StoryConfig
from aldar_lit.pipelines.poses import get_pose, pose_names
from aldar_lit.quality.keypoints import PoseError
from aldar_lit.redaction import scrub

log = logging.getLogger(__name__)
SCENE_KEYS = {"text", "pose", "seed", "guidance_scale"}


class StoryError(ValueError):
    """A story that cannot be turned into frames; the message names the file/field or says what to do."""


@dataclass(frozen=True)
class Scene:
    text: str
    pose: Optional[str] = None
    seed: Optional[int] = None
    guidance_scale: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_for(scene: Scene, trigger: str, style: str) -> str:
    """The scene text with the character's trigger token in front (once) and the style after."""
    parts = [] if trigger in scene.text else [trigger]
    parts.append(scene.text.strip())
    if style.strip():
        parts.append(style.strip())
    return ", ".join(parts)


def parse_scenes(items: Any, where: str) -> list[Scene]:
    """Validate a list of scene mappings (or plain strings); `where` names the source in errors."""
    if isinstance(items, dict) and "scenes" in items:
        items = items["scenes"]
    if not isinstance(items, list) or not items:
        raise StoryError(f"{where}: the story has no scenes (expected a non-empty list, or a mapping with `scenes:`)")
    scenes = []
    for index, item in enumerate(items):
        key = f"{where}: scenes[{index}]"
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise StoryError(f"{key}: must be a mapping with `text` (and optional pose, seed, guidance_scale)")
        unknown = set(item) - SCENE_KEYS
        if unknown:
            raise StoryError(f"{key}: unknown fields {sorted(unknown)}; allowed: {sorted(SCENE_KEYS)}")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise StoryError(f"{key}.text: must be a non-empty string")
        pose = item.get("pose")
        if pose is not None:
            try:
                get_pose(pose, key=f"{key}.pose")
            except PoseError as err:
                raise StoryError(str(err)) from err
        seed, cfg = item.get("seed"), item.get("guidance_scale")
        if seed is not None and not isinstance(seed, int):
            raise StoryError(f"{key}.seed: must be an integer, got {seed!r}")
        if cfg is not None and (not isinstance(cfg, (int, float)) or cfg < 0):
            raise StoryError(f"{key}.guidance_scale: must be a number >= 0, got {cfg!r}")
        scenes.append(Scene(text=text.strip(), pose=pose, seed=seed,
                            guidance_scale=None if cfg is None else float(cfg)))
    return scenes


def config_tree_root() -> Path | None:
    """The folder that holds the running Hydra app's config tree (conf/), or None outside a Hydra job."""
    if not HydraConfig.initialized():
        return None
    for source in HydraConfig.get().runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path).parent
        if source.provider == "main" and source.schema == "pkg":
            spec = importlib.util.find_spec(source.path)
            return Path(next(iter(spec.submodule_search_locations))).parent if spec else None
    return None


def find_scene_file(path: str | os.PathLike) -> Path:
    """A relative path is looked up from the working directory, then beside the config tree, so the default
    `conf/story/aldar_kose.yaml` is found wherever the tool is run from."""
    path = Path(path).expanduser()
    root = config_tree_root()
    tried = [path] if path.is_absolute() or root is None else [path, root / path]
    found = next((candidate for candidate in tried if candidate.is_file()), None)
    if found is None:
        raise StoryError(f"story.file: no such file {' nor '.join(repr(str(p)) for p in tried)}")
    return found


def load_scene_file(path: str | os.PathLike) -> list[Scene]:
    path = find_scene_file(path)
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise StoryError(f"story.file: cannot parse {str(path)!r}: {err}") from err
    return parse_scenes(data, str(path))


SYSTEM_PROMPT = """You split a short story into storyboard scenes for an image generator.
Return JSON: {{"scenes": [{{"text": "...", "pose": "..."}}, ...]}} with exactly {num_scenes} scenes.
Each text is one visual moment, under 40 words, and starts with the character token "{trigger}".
Each pose is one of: {poses}."""


def split_story_with_llm(text: str, trigger: str, cfg: LLMConfig) -> list[Scene]:
    """Ask an OpenAI-compatible chat model (key from OPENAI_API_KEY only) for `cfg.num_scenes` scenes."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise StoryError("story.text needs an LLM to split it into scenes, and OPENAI_API_KEY is not set. "
                         "Set it (and story.llm.base_url for another OpenAI-compatible server), or give the "
                         "scenes directly: story.file=conf/story/aldar_kose.yaml story.text=null")
    import openai

    client = openai.OpenAI(base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=cfg.max_retries)
    system = SYSTEM_PROMPT.format(num_scenes=cfg.num_scenes, trigger=trigger, poses=", ".join(pose_names()))
    try:
        response = client.chat.completions.create(
            model=cfg.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            response_format={"type": "json_object"},
            temperature=0,
        )
    except openai.OpenAIError as err:
        reason = scrub(str(err), [os.environ.get("OPENAI_API_KEY")])  # servers echo the key they rejected
        raise StoryError(f"story.llm: the request to {cfg.base_url or 'api.openai.com'} ({cfg.model}) failed: "
                         f"{reason}. Give the scenes directly with story.file=...") from None
    content = response.choices[0].message.content or ""
    try:
        data = json.loads(content)
    except json.JSONDecodeError as err:
        raise StoryError(f"story.llm: {cfg.model} did not answer with JSON: {content[:200]!r}") from err
    if isinstance(data, dict):
        for scene in data.get("scenes", []) if isinstance(data.get("scenes"), list) else []:
            if isinstance(scene, dict) and scene.get("pose") not in (None, *pose_names()):
                log.warning("story.llm: unknown pose %r replaced by the default pose", scene["pose"])
                scene["pose"] = None
    return parse_scenes(data, f"story.llm ({cfg.model})")


def load_story(cfg: StoryConfig) -> list[Scene]:
    if cfg.file is not None:
        return load_scene_file(cfg.file)
    return split_story_with_llm(cfg.text or "", cfg.trigger, cfg.llm)
