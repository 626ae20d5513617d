"""All-convolutional NSM networks (docs/design.md section 4).

``allconvnet18`` (DVS Gesture): Binarize; 3 x conv3x3 at 64, max-pool 2; 3 x at 96, max-pool;
3 x at 128, max-pool; conv3x3 at 256, two conv1x1 at 256; global average pool; linear readout.
Twelve unit convolutions, three pools, the binarizing input, the pooling and the readout: 18 layers.

``allconvnet12`` (CIFAR-style, seed): Binarize; 2 x conv3x3 at 96, max-pool; 2 x at 192, max-pool;
conv3x3 at 192, two conv1x1 at 192; global average pool; linear readout (7 unit convolutions, 12 layers).

3x3 convolutions keep the spatial size (padding 1: -1 for binary units, 0 for real-valued ones).
``width`` scales every channel count (at least 1 channel per layer).
"""

from __future__ import annotations

from events.errors import InputError
from nsm import Binarize, Readout
from nsm.neurons import NeuronKind, pool_unit

POOL = "pool"

ALLCONV18_PLAN = (
    [(64, 3)] * 3 + [POOL] + [(96, 3)] * 3 + [POOL] + [(128, 3)] * 3 + [POOL] + [(256, 3), (256, 1), (256, 1)]
)
ALLCONV12_PLAN = [(96, 3)] * 2 + [POOL] + [(192, 3)] * 2 + [POOL] + [(192, 3), (192, 1), (192, 1)]


def build_allconv(plan, in_channels: int, input_size, num_classes: int, kind: NeuronKind, width: float = 1.0):
    """Layers of an all-convolutional network following ``plan`` ((channels, kernel) or ``POOL``)."""
    if width <= 0:
        raise InputError(f"width must be > 0 (got {width})")
    h, w = input_size
    layers, channels = [Binarize()], in_channels
    for step in plan:
        if step == POOL:
            layers.append(pool_unit(kind, 2))
            h, w = h // 2, w // 2
            if min(h, w) < 1:
                raise InputError(
                    f"input size {tuple(input_size)} is too small for this network's "
                    f"{plan.count(POOL)} 2x2 pools (need at least {2 ** plan.count(POOL)} pixels a side)"
                )
            continue
        out, k = step
        out = max(1, round(out * width))
        layers.append(kind.conv(channels, out, k, padding=k // 2))
        channels = out
    layers.append(Readout(channels, num_classes))
    return layers


def allconvnet18(in_channels, input_size, num_classes, kind, width: float = 1.0):
    return build_allconv(ALLCONV18_PLAN, in_channels, input_size, num_classes, kind, width)


def allconvnet12(in_channels, input_size, num_classes, kind, width: float = 1.0):
    return build_allconv(ALLCONV12_PLAN, in_channels, input_size, num_classes, kind, width)
