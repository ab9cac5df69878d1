"""One selection of reference images for checkpoint selection and evaluation. (That train.py's val/score at the
exported step equals the evaluation's score of the same images is tested in tests/test_train_script.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aldar_lit.config import DataConfig
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.evaluation.metrics import load_reference_images
from aldar_lit.training.run import reference_images

REFERENCES = 3  # of the 8 demo images: a stride selection (0, 3, 6) and the first three (0, 1, 2) differ


def test_training_and_evaluation_select_the_same_reference_images(demo_data_dir: Path):
    data = CaptionedImageDataModule(DataConfig(root=str(demo_data_dir), resolution=32, num_workers=0))
    data.prepare_data()
    data.setup("fit")
    trained = reference_images(data, REFERENCES)
    evaluated = load_reference_images(str(demo_data_dir), REFERENCES)
    assert len(trained) == len(evaluated) == REFERENCES
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(trained, evaluated))
    # spread over the set, not its first files
    assert not np.array_equal(np.asarray(evaluated[1]), np.asarray(load_reference_images(str(demo_data_dir), 8)[1]))
