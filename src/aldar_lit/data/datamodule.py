"""LightningDataModule over a folder of captioned images (or the generated demo character)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from aldar_lit.config import DataConfig
from aldar_lit.data.dataset import CaptionedImageDataset, scan_captioned_images


class CaptionedImageDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.train_dataset: CaptionedImageDataset | None = None

    @property
    def root(self) -> Path:
        return Path(self.cfg.root).expanduser()

    def prepare_data(self) -> None:
        if self.cfg.demo is not None:
            from aldar_lit.data.demo_character import generate_demo_dataset

            demo = self.cfg.demo
            generate_demo_dataset(self.root, demo.num_images, demo.size, demo.seed, self.cfg.trigger)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            examples = scan_captioned_images(self.root, self.cfg.trigger)
            self.train_dataset = CaptionedImageDataset(
                examples, self.cfg.resolution, self.cfg.crop, self.cfg.random_flip
            )

    def train_dataloader(self) -> DataLoader:
        # The shuffle order is a function of (seed, epoch) only, so a resumed run sees the same batches.
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(
            self.train_dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed
        )
        return DataLoader(
            self.train_dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
