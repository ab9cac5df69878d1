"""What every tool's schema shares: the error type, the check helper and the composed-config-to-dataclass step."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from enum import Enum
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf

Schema = TypeVar("Schema")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names its key."""


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def check_choices(config: Any, prefix: str) -> None:
    """Turn each Enum field of a dataclass given as text into its member, or raise naming the key and the choices.

    A composed config arrives with members already (Hydra rejects a bad value at composition, naming the key and the
    choices); this covers a config built directly in Python, e.g. `DataConfig(crop="random")`.
    """
    for name, hint in typing.get_type_hints(type(config)).items():
        choices = _enum_in(hint)
        value = getattr(config, name)
        if choices is None or value is None:
            continue
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, (list, tuple)):
            setattr(config, name, [_member(choices, item, key) for item in value])
        else:
            setattr(config, name, _member(choices, value, key))


def as_plain_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as builtin types, Enum members as their values: e.g. for a checkpoint's hyper_parameters,
    which `torch.load(weights_only=True)` must read back without importing our classes."""
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)


def _enum_in(hint: Any) -> Optional[type[Enum]]:
    """The Enum of a field typed `E`, `Optional[E]` or `list[E]`, else None."""
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint
    for arg in typing.get_args(hint):
        if arg is not type(None) and (found := _enum_in(arg)) is not None:
            return found
    return None


def _member(choices: type[Enum], value: Any, key: str) -> Enum:
    try:
        return choices(value)
    except ValueError:
        raise ConfigError(f"{key}: must be one of {[c.value for c in choices]}, got {value!r}") from None


def to_schema(cfg: DictConfig, schema: type[Schema], schema_name: str) -> Schema:
    """Resolve a composed config into its dataclass, running every `__post_init__` check.

    Raises `ConfigError` naming the bad key, or saying the YAML's defaults list lacks `schema_name`.
    """
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError("\n".join(unknown))
    config = OmegaConf.to_object(cfg)
    if not isinstance(config, schema):
        raise ConfigError(f"the config was not composed on the `{schema_name}` schema (first in its defaults list)")
    return config


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """A message for each key of a schema node (nested ones too) that its dataclass does not declare.

    Hydra's `+key=value` appends a key even to a structured config, and `OmegaConf.to_object` keeps it as a stray
    attribute: `+lora.rnak=8` would train with the rank unchanged.
    """
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []  # a free-form mapping (trainer, logger, optimizer factory): its keys are arguments
    declared = [f.name for f in dataclasses.fields(schema)]
    found = []
    for key, value in node.items_ex(resolve=False):
        if key not in declared:
            close = difflib.get_close_matches(str(key), declared, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; {schema.__name__} has {', '.join(declared)}"
            found.append(f"{prefix}{key}: not a key of the schema{hint}")
        elif isinstance(value, DictConfig):
            found += unknown_keys(value, f"{prefix}{key}.")
    return found
