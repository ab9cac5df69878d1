"""Aspect-ratio buckets (SDXL's training resolutions) and a sampler whose batches share one bucket."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler

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

log = logging.getLogger(__name__)


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
    """This rank's samples in an order that is a function of (seed, epoch), forming batches of one bucket each.

    Global batches of `batch_size` x `num_replicas` samples are cut from each bucket's members in this
    epoch's order. A bucket's last global batch holds what is left, no sample repeated to fill it (as
    kohya's buckets do), so every image is trained once per epoch. With several ranks it is cut down
    to a multiple of `num_replicas`, so that every rank gets as many: up to `num_replicas - 1` images
    of a bucket (different ones each epoch) wait for a later epoch. Each rank takes its slice of every
    global batch: a resumed run sees the same batches, every rank of a step trains at the same
    resolution, and N ranks x B samples see what one process with N*B samples would whenever each
    bucket's remainder divides by N. `BucketBatchSampler` hands the batches to a DataLoader.
    """

    def __init__(self, buckets_of_items: Sequence[Bucket], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        super().__init__(range(len(buckets_of_items)), num_replicas=num_replicas, rank=rank, seed=seed)
        self.batch_size = batch_size
        self.groups: dict[Bucket, list[int]] = {}
        for index, bucket in enumerate(buckets_of_items):
            self.groups.setdefault(bucket, []).append(index)
        for bucket, members in self.groups.items():
            if len(members) < num_replicas:
                log.warning("bucket %s holds %d images, fewer than the %d ranks: they are not trained",
                            bucket, len(members), num_replicas)
        global_batches = [batch for members in self.groups.values() for batch in self._global_batches(members)]
        self.num_batches = len(global_batches)
        self.num_samples = sum(map(len, global_batches)) // num_replicas  # this rank's, as in DistributedSampler

    def _global_batches(self, members: list[int]) -> list[list[int]]:
        """One bucket's members (in this epoch's order) cut into global batches."""
        size = self.batch_size * self.num_replicas
        batches = [members[i:i + size] for i in range(0, len(members), size)]
        batches[-1] = batches[-1][:len(batches[-1]) // self.num_replicas * self.num_replicas]
        return [batch for batch in batches if batch]

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        global_batches = []
        for members in self.groups.values():
            order = torch.randperm(len(members), generator=generator).tolist()
            global_batches += self._global_batches([members[i] for i in order])
        global_batches = [global_batches[i] for i in torch.randperm(len(global_batches), generator=generator).tolist()]
        return [batch[self.rank * (share := len(batch) // self.num_replicas):(self.rank + 1) * share]
                for batch in global_batches]

    def __iter__(self) -> Iterator[int]:
        return iter([index for batch in self.batches() for index in batch])


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """A `BucketSampler`'s batches for the DataLoader's `batch_sampler`, from batch `first_batch` of the epoch on
    (a resumed epoch skips the batches it trained).

    A batch lists `(index, epoch)` keys: the dataset seeds an item's random crop and flip with them.
    Lightning calls `set_epoch` on the `sampler` of a batch sampler, and leaves both in place with
    `use_distributed_sampler=False` (the bucket sampler shards the data itself).
    """

    def __init__(self, sampler: BucketSampler):
        super().__init__()
        self.sampler = sampler
        self.first_batch = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler.batches()[self.first_batch:]:
            yield [(index, epoch) for index in batch]

    def __len__(self) -> int:
        return self.sampler.num_batches
