"""Aspect buckets: SDXL's shapes, one bucket per batch, per-sample time ids, seeded DDP-aware order."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from PIL import Image

from aldar_lit.config import DataConfig, LoraConfig, ModelConfig, ObjectiveConfig, OptimConfig
from aldar_lit.data.buckets import (
    SDXL_BUCKETS_1024, BucketBatchSampler, BucketSampler, nearest_bucket, sdxl_buckets,
)
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.training.module import SDXLLoRAModule


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


def epoch_batches(buckets, batch_size: int, replicas: int = 1, seed: int = 0, epoch: int = 0) -> list[list[list[int]]]:
    """Every rank's batches of one epoch: [rank][step] -> dataset indices."""
    samplers = [BucketSampler(buckets, batch_size, replicas, rank, seed) for rank in range(replicas)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [sampler.batches() for sampler in samplers]


def test_bucket_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    buckets = [(64, 64)] * 7 + [(48, 80)] * 5
    assert epoch_batches(buckets, 3) == epoch_batches(buckets, 3)
    assert epoch_batches(buckets, 3, epoch=1) != epoch_batches(buckets, 3)
    assert epoch_batches(buckets, 3, seed=1) != epoch_batches(buckets, 3)
    [batches] = epoch_batches(buckets, 3, epoch=3)
    assert sorted(i for batch in batches for i in batch) == list(range(12))  # every sample once, none repeated
    assert sorted(len(batch) for batch in batches) == [1, 2, 3, 3, 3]  # each bucket's last batch holds the rest
    assert all(len({buckets[i] for i in batch}) == 1 for batch in batches)
    sampler = BucketSampler(buckets, 3, seed=0)
    sampler.set_epoch(3)  # Lightning finds the sampler as the batch sampler's `sampler`
    assert list(sampler) == [i for batch in batches for i in batch] and len(sampler) == 12
    batch_sampler = BucketBatchSampler(sampler)
    assert list(batch_sampler) == [[(i, 3) for i in batch] for batch in batches]  # keys carry the epoch
    assert len(batch_sampler) == 5


def test_ranks_split_the_global_batches_of_a_single_process() -> None:
    buckets = [(64, 64)] * 10 + [(48, 80)] * 4  # remainders (4 and 4) divide by the 2 ranks
    [single] = epoch_batches(buckets, 6, seed=5, epoch=2)
    per_rank = epoch_batches(buckets, 3, replicas=2, seed=5, epoch=2)
    assert len(per_rank[0]) == len(per_rank[1]) == len(single) == 3
    for step, global_batch in enumerate(single):
        assert per_rank[0][step] + per_rank[1][step] == global_batch  # same samples, same step
        assert len({buckets[i] for i in global_batch}) == 1  # every rank trains one resolution per step
    with pytest.raises(ValueError, match="rank 2"):
        BucketSampler(buckets, batch_size=3, num_replicas=2, rank=2)


@pytest.mark.parametrize(("batch_size", "replicas"), [(4, 1), (2, 2), (3, 2), (2, 3)])
def test_every_image_is_seen_equally_often_and_never_twice_in_a_batch(batch_size: int, replicas: int) -> None:
    """Mixed aspect ratios, among them a lone portrait: no bucket's last batch is padded with repeats, so
    every image is trained once per epoch (under DDP, a few wait for a later one so the ranks get equal shares)."""
    buckets = [(64, 64)] * 11 + [(48, 80)] * 5 + [(80, 48)] * 3 + [(96, 40)]
    for epoch in range(3):
        per_rank = epoch_batches(buckets, batch_size, replicas, seed=7, epoch=epoch)
        seen = Counter()
        for step_batches in zip(*per_rank, strict=True):
            assert len({len(batch) for batch in step_batches}) == 1 and step_batches[0]  # equal, non-empty shares
            global_batch = [i for batch in step_batches for i in batch]
            assert len(global_batch) == len(set(global_batch))  # no sample twice in a step
            assert len({buckets[i] for i in global_batch}) == 1
            seen.update(global_batch)
        if replicas == 1:
            assert all(seen[i] == 1 for i in range(len(buckets))), seen
        else:  # fewer than `replicas` per bucket wait for a later epoch, so that every rank gets as many
            assert set(seen.values()) == {1} and len(seen) >= len(buckets) - len(set(buckets)) * (replicas - 1), seen


def test_no_two_samples_of_a_batch_share_a_noise_draw(tmp_path) -> None:
    """Batches from the real loader, noise from the module's per-sample generators, a lone portrait image."""
    root = shapes_folder(tmp_path, [(128, 128)] * 5 + [(96, 170)])
    data = CaptionedImageDataModule(DataConfig(root=str(root), resolution=64, bucket_multiple=8, batch_size=4,
                                               num_workers=0), seed=3)
    data.setup()
    module = SDXLLoRAModule(ModelConfig(), LoraConfig(), OptimConfig(), ObjectiveConfig(), seed=3)
    sizes = []
    for batch in data.train_dataloader():
        noise = torch.stack([torch.randn(16, generator=g) for g in module.sample_generators(batch["index"])])
        assert len(torch.unique(noise, dim=0)) == len(noise)
        sizes.append(len(noise))
    assert sorted(sizes) == [1, 1, 4]  # square: 4 + 1, portrait: 1


def test_a_replaced_broken_file_keeps_its_own_noise_draw(tmp_path) -> None:
    """A file broken after the scan is replaced by a sample of its bucket, maybe one in the same batch:
    the replacement still carries the broken file's index, which seeds its noise."""
    root = shapes_folder(tmp_path, [(128, 128)] * 3)
    data = CaptionedImageDataModule(DataConfig(root=str(root), resolution=64, bucket_multiple=8, batch_size=3,
                                               num_workers=0))
    data.setup()
    (root / "01.png").write_bytes(b"")
    [batch] = list(data.train_dataloader())
    assert sorted(batch["index"].tolist()) == [0, 1, 2]


def test_loader_over_bucket_sampler_yields_one_bucket_per_batch_without_padding(tmp_path) -> None:
    root = shapes_folder(tmp_path, [(128, 128)] * 3 + [(170, 96)] * 2)
    data = CaptionedImageDataModule(DataConfig(root=str(root), resolution=64, bucket_multiple=8, batch_size=2,
                                               num_workers=0))
    data.setup()
    loader = data.train_dataloader()
    batches = list(loader)
    assert isinstance(loader.batch_sampler, BucketBatchSampler) and len(loader) == 3
    assert sorted(len(b["caption"]) for b in batches) == [1, 2, 2]  # square 2 + 1, landscape 2
    assert sorted(i for b in batches for i in b["index"].tolist()) == [0, 1, 2, 3, 4]
