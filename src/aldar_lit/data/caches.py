"""On-disk caches of VAE latents and text embeddings, shared across runs and sweeps.

An entry's key hashes everything its tensors depend on: for latents the image's bytes, the VAE
(class, config, dtype and every weight), the bucket and the crop; for text embeddings the caption
and both text encoders and tokenizers. Change any part and the key changes, so a stale entry is
never read; entries are written atomically, so a killed run leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from aldar_lit.atomic_write import write_bytes
from aldar_lit.images import DataError
from aldar_lit.models.conditioning import encode_prompts

if TYPE_CHECKING:
    from aldar_lit.data.dataset import CaptionedImageDataset

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the decoding/resizing/encoding that produces an entry changes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def module_fingerprint(*modules: nn.Module) -> str:
    """A hash of the modules' classes, configs, dtypes and all of their weights."""
    digest = hashlib.blake2b(digest_size=20)
    for module in modules:
        digest.update(type(module).__qualname__.encode())
        config = getattr(module, "config", None)
        if config is not None:
            as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(*tokenizers) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for tokenizer in tokenizers:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(f"{tokenizer.model_max_length}:{tokenizer.pad_token}".encode())
    return digest.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, (FORMAT_VERSION, *parts))).encode()).hexdigest()


class TensorCache:
    """A folder of safetensors files, one per key."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            log.warning("ignoring unreadable cache entry %s (%s)", path, err)
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        write_bytes(self.path(key), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def _fill(keys: Sequence[str], groups: Sequence[object], cache: TensorCache, batch_size: int, rank: int,
          world_size: int, encode: Callable[[list[int]], list[dict[str, torch.Tensor] | None]]) -> int:
    """Encode the entries missing from `cache`, this rank's share of them, in batches of one group each.

    `encode` returns None for an item it could not encode (a bad file under the skip policy).
    """
    missing = [i for i, key in enumerate(keys) if not cache.path(key).is_file()][rank::world_size]
    by_group: dict[object, list[int]] = {}
    for index in missing:
        by_group.setdefault(groups[index], []).append(index)
    written = 0
    for members in by_group.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            for index, tensors in zip(chunk, encode(chunk), strict=True):
                if tensors is not None:
                    cache.put(keys[index], tensors)
                    written += 1
    return written


@torch.no_grad()
def fill_latent_cache(dataset: CaptionedImageDataset, vae: nn.Module, cache_dir: Path, batch_size: int = 8,
                      rank: int = 0, world_size: int = 1) -> int:
    """Encode every (image, bucket, crop) the dataset needs that is not cached yet, switch the dataset to
    the cache, and return how many entries this rank encoded now.

    Stores the VAE posterior's parameters (`latent_dist`), not a sample, so training still draws a
    fresh latent sample each step exactly as it does from pixels.
    """
    if dataset.crop != "center" or dataset.random_flip:
        raise ValueError("data.cache_latents: needs data.crop=center and data.random_flip=false "
                         "(a cached latent fixes the crop)")
    vae_id = module_fingerprint(vae)
    cache = TensorCache(Path(cache_dir) / "latents")
    keys = [_key(file_sha256(example.path), vae_id, bucket, dataset.planned_crop(i), "noflip")
            for i, (example, bucket) in enumerate(zip(dataset.examples, dataset.item_buckets, strict=True))]

    def encode(indices: list[int]) -> list[dict[str, torch.Tensor] | None]:
        readable = {}
        for index in indices:
            try:
                readable[index] = dataset.pixels(index)[0]
            except DataError as err:
                if dataset.on_bad_file == "error":
                    raise
                log.warning("%s; not cached, skipped in training (data.on_bad_file=skip)", err)
        if not readable:
            return [None] * len(indices)
        pixels = torch.stack(list(readable.values())).to(vae.device, vae.dtype)
        parameters = dict(zip(readable, vae.encode(pixels).latent_dist.parameters, strict=True))
        return [{"latent_dist": parameters[i]} if i in parameters else None for i in indices]

    encoded = _fill(keys, dataset.item_buckets, cache, batch_size, rank, world_size, encode)
    log.info("latent cache %s: %d of %d entries encoded now, the rest reused", cache.directory, encoded, len(keys))
    dataset.use_latent_cache(cache, keys)
    return encoded


@torch.no_grad()
def fill_text_cache(dataset: CaptionedImageDataset, tokenizers: Sequence, text_encoders: Sequence[nn.Module],
                    cache_dir: Path, batch_size: int = 16, rank: int = 0, world_size: int = 1) -> int:
    """Encode every caption not cached yet with the (frozen) text encoders, switch the dataset to the
    cache, and return how many entries this rank encoded now."""
    encoders_id = _key(module_fingerprint(*text_encoders), tokenizer_fingerprint(*tokenizers))
    cache = TensorCache(Path(cache_dir) / "text")
    captions = [example.caption for example in dataset.examples]
    keys = [_key(caption, encoders_id) for caption in captions]

    def encode(indices: list[int]) -> list[dict[str, torch.Tensor]]:
        prompt_embeds, pooled = encode_prompts(tokenizers, text_encoders, [captions[i] for i in indices])
        return [{"prompt_embeds": e, "pooled_prompt_embeds": p} for e, p in zip(prompt_embeds, pooled, strict=True)]

    encoded = _fill(keys, [0] * len(keys), cache, batch_size, rank, world_size, encode)
    log.info("text-embedding cache %s: %d of %d entries encoded now", cache.directory, encoded, len(keys))
    dataset.use_text_cache(cache, keys)
    return encoded
