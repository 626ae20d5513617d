"""``specknet``: an all-convolutional NSM sized for Speck (DYNAP-CNN), for DVS-Gesture-style frames at 32 x 32.

Binarize; 2 x conv3x3 at 32; conv3x3 stride 2 at 32; conv3x3 at 32; conv3x3 stride 2 at 64; conv3x3 at 64;
conv3x3 stride 2 at 64; 2 x conv1x1 at 128; global average pool; linear readout. Nine unit convolutions, one per
chip core (Speck has nine), and no pools: the stride-2 convolutions downsample (32 -> 16 -> 8 -> 4), which a core
does in its own convolution, where ``allconvnet18``'s OR-pools need a neuron after each pool that a core does not
have.

At up to 24 input channels (6 count channels in a four-level input code) every layer fits a core of its own
(``pipelines.export.targets``): kernel memory c 2^(ceil log2 k^2 + ceil log2 f) is at most 64 Ki entries (the two
largest cores take the two 64 -> 64 convolutions, a 32 Ki one the 32 -> 64), neuron memory f H W at most 32 Ki
(the two 32 x 32 layers, on cores with 64 Ki). The readout (real-valued logits of the last layer's pooled spikes)
runs on the host. ``width`` scales every channel count; at width > 1 the network no longer fits, which the export
report says. A seven-layer first version (16 channels at 32 x 32, one 1x1 layer) scored 82.7 % per clip against
this one's (docs/training-study.md, section 16).
"""

from __future__ import annotations

from events.errors import InputError
from nsm import Binarize, Readout
from nsm.neurons import NeuronKind

SPECKNET_PLAN = (
    (32, 3, 1),
    (32, 3, 1),
    (32, 3, 2),
    (32, 3, 1),
    (64, 3, 2),
    (64, 3, 1),
    (64, 3, 2),
    (128, 1, 1),
    (128, 1, 1),
)
"""(output channels, kernel size, stride) of each unit convolution."""


def specknet(in_channels, input_size, num_classes, kind: NeuronKind, width: float = 1.0):
    """Layers of ``specknet`` (module docstring); 3x3 convolutions pad by 1 (-1 for binary units: no spike), so any
    input size works (an H x W input leaves ceil(H / 8) x ceil(W / 8) positions for the readout)."""
    if width <= 0:
        raise InputError(f"width must be > 0 (got {width})")
    layers, channels = [Binarize()], in_channels
    for out, k, stride in SPECKNET_PLAN:
        out = max(1, round(out * width))
        layers.append(kind.conv(channels, out, k, stride=stride, padding=k // 2))
        channels = out
    layers.append(Readout(channels, num_classes))
    return layers
