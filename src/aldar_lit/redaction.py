"""Keeping keys off disk: what a secret-looking config key is, the command-line guard, and the error-message scrubber.

Keys come from environment variables only. An override such as `+story.llm.api_key=...` would be written
in plaintext to `.hydra/overrides.yaml` (before the task function runs), into Hydra's error message and,
through `sys.argv`, into the W&B run, so the entry points refuse it before `@hydra.main` sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# A key (or one dotted/underscored part of it) named like a credential: api_key, apikey, hf_token, client_secret,
# password; not max_tokens or tokenizer.
SECRET_KEY = re.compile(r"(?:^|[._\-])(?:api_?key|token|secret|password|passwd|credentials?)(?:$|[._\-])",
                        re.IGNORECASE)
# Shapes of a credential inside free text: an OpenAI-style key, or an HTTP authorization value.
SECRET_TEXT = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[^\s'\",}]+)", re.IGNORECASE)
REDACTED = "<redacted>"
MIN_SECRET_CHARS = 8

# Where a service's key is read from, by a word in the config key that names the service.
KEY_ENV_VARS = {"wandb": "WANDB_API_KEY", "hf": "HF_TOKEN", "huggingface": "HF_TOKEN", "openai": "OPENAI_API_KEY",
                "llm": "OPENAI_API_KEY"}


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def key_env_var(key: str, default: str | None) -> str | None:
    """The environment variable a secret-looking config key should come from instead."""
    parts = set(re.split(r"[._\-+]", key.lower()))
    return next((env for service, env in KEY_ENV_VARS.items() if service in parts), default)


def secret_overrides(argv: Sequence[str]) -> list[str]:
    """The keys, as typed, of the command-line overrides (`key=...`, `+key=...`, `++key=...`) that look like secrets."""
    keys = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue  # a flag such as -m or --cfg, or a deletion without a value
        key = arg.split("=", 1)[0]
        if is_secret_key(key.lstrip("+~")):
            keys.append(key)
    return keys


def refuse_secret_overrides(argv: Sequence[str], env_var: str | None) -> None:
    """Exit with an error, before anything is written, if a command-line override sets a secret-looking key.

    `env_var` is the tool's own key variable (None: it uses no key), named for a key that does not say which
    service it is for.
    """
    keys = secret_overrides(argv)
    if keys:
        hints = {key: key_env_var(key, env_var) for key in keys}
        lines = [f"  {key}=...: set {env} in the environment instead" if env else
                 f"  {key}=...: this tool reads no key; keys come from environment variables only"
                 for key, env in hints.items()]
        raise SystemExit("error: refusing a key on the command line (it would be written to .hydra/overrides.yaml, "
                         "logs and W&B):\n" + "\n".join(lines))


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with each of `secrets` (e.g. the configured key) and anything shaped like a key replaced by <redacted>."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:  # a toy key such as "x" would garble the message
            text = text.replace(secret, REDACTED)
    return SECRET_TEXT.sub(REDACTED, text)
