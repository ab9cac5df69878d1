"""Lightning checkpoints that reach their final name only when complete.

Lightning's own save writes a temporary file in `$TMPDIR` and moves it; when the run directory is on
another filesystem (local /tmp, outputs on NFS or Lustre) the move copies into the final name, so a full
disk truncates `last.ckpt` and a kill leaves it empty. Here the checkpoint is written as a temporary
sibling in the checkpoint's own directory, fsynced and renamed, so the previous one survives any failure.
"""

from __future__ import annotations

import io
import os
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from aldar_lit.atomic_write import write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves go through `aldar_lit.atomic_write` (local paths only).

    Use: `lightning.Trainer(plugins=[AtomicCheckpointIO()])`. Loading and removal are Lightning's.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()  # serialised first: torch.save hides the OS error of a failed write to a file
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getbuffer())
