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

    Use it as the DataLoader's `sampler` with the same `batch_size` and `drop_last=False`. Global
    batches (`batch_size` x `num_replicas` samples of one bucket, a bucket's last one filled with its
    own samples again) are formed and shuffled as a function of (seed, epoch) and the global batch
    size only; each rank takes its slice of every global batch. So a resumed run sees the same
    batches, every rank of a step trains at the same resolution, and N ranks x B samples see exactly
    what one process with N*B samples would. Like `DistributedSampler` (which it subclasses),
    Lightning leaves it in place and calls `set_epoch` on it.
    """

    def __init__(self, buckets_of_items: Sequence[Bucket], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        super().__init__(range(len(buckets_of_items)), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.batch_size = batch_size
        self.groups: dict[Bucket, list[int]] = {}
        for index, bucket in enumerate(buckets_of_items):
            self.groups.setdefault(bucket, []).append(index)
        global_size = batch_size * num_replicas
        self.batches_per_rank = sum(math.ceil(len(members) / global_size) for members in self.groups.values())

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        global_size = self.batch_size * self.num_replicas
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        global_batches = []
        for members in self.groups.values():
            order = torch.randperm(len(members), generator=generator).tolist() if self.shuffle else range(len(members))
            members = [members[i] for i in order]
            filled = math.ceil(len(members) / global_size) * global_size
            members = [members[i % len(members)] for i in range(filled)]
            global_batches += [members[i:i + global_size] for i in range(0, filled, global_size)]
        if self.shuffle:
            global_batches = [global_batches[i] for i in torch.randperm(len(global_batches), generator=generator).tolist()]
        start = self.rank * self.batch_size
        return [batch[start:start + self.batch_size] for batch in global_batches]

    def __iter__(self) -> Iterator[int]:
        return iter([index for batch in self.batches() for index in batch])

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size
