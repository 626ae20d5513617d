"""``nmnist_cnn``: the seed's N-MNIST network, 32c5-p2-64c5-p2-1024-10.

Binarize; conv5x5 at 32 (no padding), max-pool 2; conv5x5 at 64, max-pool 2; flatten; 1024
fully connected units; linear readout. On 34 x 34 input the maps are 30 -> 15 -> 11 -> 5, so the
fully connected layer reads 64 * 5 * 5 = 1600 units. Every size is an argument.
"""

from __future__ import annotations

from torch import nn

from events.errors import InputError
from nsm import Binarize, Readout
from nsm.neurons import NeuronKind, pool_unit


def nmnist_cnn(
    in_channels, input_size, num_classes, kind: NeuronKind, channels=(32, 64), hidden: int = 1024, kernel_size: int = 5
):
    h, w = input_size
    layers, c = [Binarize()], in_channels
    for out in channels:
        layers += [kind.conv(c, out, kernel_size), pool_unit(kind, 2)]
        h, w = (h - kernel_size + 1) // 2, (w - kernel_size + 1) // 2
        if min(h, w) < 1:
            raise InputError(
                f"input size {tuple(input_size)} is too small for {len(channels)} conv{kernel_size}-pool2 stages"
            )
        c = out
    layers += [nn.Flatten(), kind.linear(c * h * w, hidden), Readout(hidden, num_classes)]
    return layers
