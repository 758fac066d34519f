"""The teacher zoo, as architectures of the IR.

VGG-11/13/16/19 with BN for 32x32 inputs (5 max-pools to 1x1, one linear classifier);
CIFAR ResNet-18/34 (3x3 stem, BasicBlocks [2,2,2,2] / [3,4,6,3], widths 64-512, 1x1
projection shortcuts); CIFAR ResNet-20/56 as in TAS (stem 16, widths 16-64, 3 / 9 blocks
per stage); and ``digitsnet``, a small VGG-style net for the 8x8 embedded digits.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from n2n_gym.ir.arch import (
    BODY,
    CONV,
    GAP,
    LINEAR,
    MAXPOOL,
    SHORTCUT,
    Architecture,
    Layer,
)

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "digitsnet": [32, 32, "M", 64, 64, "M", 128],
}
RESNET_CONFIGS: dict[str, tuple[list[int], list[int]]] = {
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet34": ([3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet20": ([3, 3, 3], [16, 32, 64]),
    "resnet56": ([9, 9, 9], [16, 32, 64]),
}


def _with_origins(name: str, input_shape, num_classes: int, layers: list[Layer]) -> Architecture:
    layers = [dataclasses.replace(layer, origin=i) for i, layer in enumerate(layers)]
    return Architecture(tuple(input_shape), num_classes, tuple(layers), name=name)


def vgg(name: str, input_shape=(3, 32, 32), num_classes: int = 10) -> Architecture:
    layers: list[Layer] = []
    for v in VGG_CONFIGS[name]:
        if v == "M":
            layers.append(Layer(MAXPOOL, kernel=2, stride=2))
        else:
            layers.append(Layer(CONV, out=int(v), kernel=3, stride=1, padding=1))
    if name == "digitsnet":
        layers.append(Layer(GAP))
    layers.append(Layer(LINEAR, out=num_classes, relu=False))
    return _with_origins(name, input_shape, num_classes, layers)


def resnet(name: str, input_shape=(3, 32, 32), num_classes: int = 10) -> Architecture:
    depths, widths = RESNET_CONFIGS[name]
    layers = [Layer(CONV, out=widths[0], kernel=3, stride=1, padding=1)]
    channels, block = widths[0], 0
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        for b in range(depth):
            stride = 2 if (stage > 0 and b == 0) else 1
            layers.append(Layer(CONV, width, 3, stride, 1, True, block, BODY))
            layers.append(Layer(CONV, width, 3, 1, 1, False, block, BODY))
            if stride != 1 or channels != width:
                layers.append(Layer(CONV, width, 1, stride, 0, False, block, SHORTCUT))
            channels, block = width, block + 1
    layers += [Layer(GAP), Layer(LINEAR, out=num_classes, relu=False)]
    return _with_origins(name, input_shape, num_classes, layers)


TEACHERS: dict[str, Callable[..., Architecture]] = {
    **{name: (lambda n: (lambda **kw: vgg(n, **kw)))(name) for name in VGG_CONFIGS},
    **{name: (lambda n: (lambda **kw: resnet(n, **kw)))(name) for name in RESNET_CONFIGS},
}


def teacher_architecture(name: str, input_shape=(3, 32, 32), num_classes: int = 10) -> Architecture:
    """The zoo architecture ``name`` for inputs of ``input_shape`` and ``num_classes`` classes."""
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher {name!r}; the zoo has {sorted(TEACHERS)}")
    return TEACHERS[name](input_shape=tuple(input_shape), num_classes=num_classes)
