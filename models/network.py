"""The container every registered model is: a sequence of layers that remembers how it was made."""

from __future__ import annotations

from torch import nn


class Network(nn.Sequential):
    """``Binarize`` -> units and pools -> ``Readout``, run in order.

    ``spec`` holds the arguments of ``models.create_model`` that rebuild this architecture (name,
    sizes, neuron kind and options), so a checkpoint needs only the spec and the state dict.
    """

    def __init__(self, layers: list[nn.Module], spec: dict):
        super().__init__(*layers)
        self.spec = dict(spec)

    @property
    def neuron(self) -> str:
        return self.spec["neuron"]
