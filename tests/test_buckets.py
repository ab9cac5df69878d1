"""Aspect buckets: SDXL's shapes, one bucket per batch, per-sample time ids, seeded DDP-aware order."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from PIL import Image

from aldar_lit.config import DataConfig
from aldar_lit.data.buckets import SDXL_BUCKETS_1024, BucketSampler, nearest_bucket, sdxl_buckets
from aldar_lit.data.datamodule import CaptionedImageDataModule


def test_buckets_are_sdxls_at_1024_and_scaled_below_the_square_area() -> None:
    assert sdxl_buckets(1024, 32) == list(SDXL_BUCKETS_1024)
    assert sdxl_buckets(64, 8) == [(64, 64), (72, 56), (56, 72), (72, 48), (48, 72), (80, 48), (48, 80),
                                   (96, 40), (40, 96)]
    for resolution, multiple in ((1024, 64), (512, 32), (64, 8)):
        for h, w in sdxl_buckets(resolution, multiple):
            assert h * w <= resolution**2 and h % multiple == 0 and w % multiple == 0
    assert sdxl_buckets(32, 32) == [(32, 32)]  # the others collapse at this size


def test_nearest_bucket_follows_the_aspect_ratio() -> None:
    buckets = sdxl_buckets(1024, 64)
    assert nearest_bucket(1080, 1920, buckets) == (768, 1344)  # 16:9 landscape
    assert nearest_bucket(1920, 1080, buckets) == (1344, 768)
    assert nearest_bucket(1000, 1010, buckets) == (1024, 1024)


def shapes_folder(tmp_path, sizes):
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (40 * i % 255, 90, 160)).save(tmp_path / f"{i:02d}.png")
        (tmp_path / f"{i:02d}.txt").write_text(f"aldar_kose_man, image {i}")
    return tmp_path


def test_each_batch_holds_one_bucket_with_correct_time_ids(tmp_path) -> None:
    sizes = [(128, 128)] * 5 + [(170, 96)] * 3 + [(96, 170)] * 2  # square, landscape, portrait
    root = shapes_folder(tmp_path, sizes)
    data = CaptionedImageDataModule(DataConfig(root=str(root), resolution=64, bucket_multiple=8, batch_size=2,
                                               num_workers=0), seed=1)
    data.setup()
    seen = Counter()
    for batch in data.train_dataloader():
        assert len({tuple(t) for t in batch["target_size"].tolist()}) == 1
        assert batch["pixel_values"].shape[-2:] == tuple(batch["target_size"][0].tolist())
        for original, crop, target in zip(batch["original_size"].tolist(), batch["crop_top_left"].tolist(),
                                          batch["target_size"].tolist()):
            seen[tuple(original), tuple(crop), tuple(target)] += 1
    # 170x96 -> bucket 48x80: resized to 48x85, centre crop starts 2 px from the left
    assert seen[(96, 170), (0, 2), (48, 80)] >= 3
    assert seen[(170, 96), (2, 0), (80, 48)] >= 2
    assert seen[(128, 128), (0, 0), (64, 64)] >= 5


def test_bucket_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    buckets = [(64, 64)] * 7 + [(48, 80)] * 5

    def epoch_order(seed: int, epoch: int, rank: int = 0, replicas: int = 1) -> list[int]:
        sampler = BucketSampler(buckets, batch_size=3, num_replicas=replicas, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_order(0, 0) == epoch_order(0, 0)
    assert epoch_order(0, 0) != epoch_order(0, 1) and epoch_order(0, 0) != epoch_order(1, 0)
    order = epoch_order(0, 3)
    assert set(order) == set(range(12))  # every sample, partial batches filled from their own bucket
    for start in range(0, len(order), 3):
        assert len({buckets[i] for i in order[start:start + 3]}) == 1


def test_ranks_split_the_global_batches_of_a_single_process() -> None:
    buckets = [(64, 64)] * 9 + [(48, 80)] * 3
    single = BucketSampler(buckets, batch_size=6, num_replicas=1, rank=0, seed=5)
    ranks = [BucketSampler(buckets, batch_size=3, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for sampler in (single, *ranks):
        sampler.set_epoch(2)
    per_rank = [sampler.batches() for sampler in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(single.batches()) == 3 == len(ranks[0]) // 3
    for step, global_batch in enumerate(single.batches()):
        assert per_rank[0][step] + per_rank[1][step] == global_batch  # same samples, same step
        assert len({buckets[i] for i in global_batch}) == 1  # every rank trains one resolution per step
    assert {i for batches in per_rank for b in batches for i in b} == set(range(12))
    with pytest.raises(ValueError):
        BucketSampler(buckets, batch_size=3, num_replicas=2, rank=2)


def test_loader_over_bucket_sampler_yields_whole_batches(tmp_path) -> None:
    root = shapes_folder(tmp_path, [(128, 128)] * 3 + [(170, 96)] * 2)
    data = CaptionedImageDataModule(DataConfig(root=str(root), resolution=64, bucket_multiple=8, batch_size=2,
                                               num_workers=0))
    data.setup()
    loader = data.train_dataloader()
    batches = list(loader)
    assert isinstance(loader.sampler, BucketSampler)
    assert [len(b["caption"]) for b in batches] == [2, 2, 2]  # 2 square batches (one refilled) + 1 landscape
    assert all(isinstance(b["pixel_values"], torch.Tensor) for b in batches)
