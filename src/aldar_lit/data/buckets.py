"""Aspect-ratio buckets (SDXL's training resolutions) and a sampler whose batches share one bucket."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler

# (height, width) of SDXL's aspect buckets at ~1024x1024 pixels (SDXL report, appendix; the
# landscape/portrait pairs diffusers and kohya train with).
SDXL_BUCKETS_1024 = (
    (1024, 1024),
    (1152, 896), (896, 1152),
    (1216, 832), (832, 1216),
    (1344, 768), (768, 1344),
    (1536, 640), (640, 1536),
)

Bucket = tuple[int, int]


def sdxl_buckets(resolution: int, multiple: int) -> list[Bucket]:
    """SDXL's buckets scaled to about `resolution`² pixels, sides floored to `multiple`.

    Flooring keeps every bucket at or below the square's pixel count; buckets that collapse onto
    another one (or below `multiple`) are dropped, so at small resolutions fewer shapes remain.
    """
    scale = resolution / 1024
    buckets: list[Bucket] = []
    for height, width in SDXL_BUCKETS_1024:
        bucket = (int(height * scale) // multiple * multiple, int(width * scale) // multiple * multiple)
        if min(bucket) >= multiple and bucket not in buckets:
            buckets.append(bucket)
    return buckets


def nearest_bucket(height: int, width: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to the image's (in log space, so 2:1 and 1:2 are symmetric)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - ratio), -b[0] * b[1]))


def resize_and_crop_box(height: int, width: int, bucket: Bucket, center: bool,
                        generator: torch.Generator | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resized (h, w) covering the bucket, and the (top, left) of the bucket-sized crop taken from it."""
    target_h, target_w = bucket
    scale = max(target_h / height, target_w / width)
    resized = (max(target_h, round(height * scale)), max(target_w, round(width * scale)))
    spare_h, spare_w = resized[0] - target_h, resized[1] - target_w
    if center:
        return resized, (round(spare_h / 2), round(spare_w / 2))
    top = int(torch.randint(0, spare_h + 1, (), generator=generator))
    left = int(torch.randint(0, spare_w + 1, (), generator=generator))
    return resized, (top, left)


class BucketSampler(DistributedSampler):
    """Indices ordered so that every run of `batch_size` consecutive ones lies in a single bucket.

    Use it as the DataLoader's `sampler` with the same `batch_size` and `drop_last=False`. The order is
    a function of (seed, epoch) only, like `DistributedSampler`'s (which Lightning then leaves in place
    and calls `set_epoch` on), so a resumed run sees the same batches. A bucket's last, partial batch is
    filled with its own samples again; batches are shuffled across buckets and dealt out round-robin
    to the `num_replicas` ranks, padded so that every rank gets the same number of batches.
    """

    def __init__(self, buckets_of_items: Sequence[Bucket], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        super().__init__(range(len(buckets_of_items)), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.batch_size = batch_size
        self.groups: dict[Bucket, list[int]] = {}
        for index, bucket in enumerate(buckets_of_items):
            self.groups.setdefault(bucket, []).append(index)
        batches = sum(math.ceil(len(members) / batch_size) for members in self.groups.values())
        self.batches_per_rank = math.ceil(batches / num_replicas)

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for members in self.groups.values():
            order = torch.randperm(len(members), generator=generator).tolist() if self.shuffle else range(len(members))
            members = [members[i] for i in order]
            filled = math.ceil(len(members) / self.batch_size) * self.batch_size
            members = [members[i % len(members)] for i in range(filled)]
            batches += [members[i:i + self.batch_size] for i in range(0, filled, self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        total = self.batches_per_rank * self.num_replicas
        batches = [batches[i % len(batches)] for i in range(total)]
        return batches[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter([index for batch in self.batches() for index in batch])

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size
