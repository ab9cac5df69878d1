"""The activation memory of a training step, on any device: what the forward pass keeps for the backward."""

from __future__ import annotations

import torch
from torch import nn


class SavedActivations:
    """While active, counts the bytes of the distinct storages autograd keeps for the backward pass, the
    parameters of `model` excluded (they are held anyway).

    Gradient-checkpointed regions save through the checkpoint's own hooks, so what they hold is not counted.
    """

    def __init__(self, model: nn.Module):
        self._parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._parameters:
            self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.__exit__(*exc_info)
