"""n2n_gym.ir.zoo: the teacher architectures, their exact parameter counts and published MACs."""

from __future__ import annotations

import pytest
from conftest import measured, zoo_arch

from n2n_gym.ir.zoo import TEACHERS, teacher_architecture

# Independent figures: ResNet-18/34 are the usual CIFAR_SHAPE counts (kuangliu/pytorch-cifar);
# the VGGs are kuangliu's counts minus the conv biases (a BN follows every conv here);
# ResNet-20/56 are TAS' option-A counts plus the two 1x1 projection shortcuts (2,752).
ZOO_PARAMS_10_CLASSES = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet20": 272_474,
    "resnet56": 855_770,
    "vgg11": 9_228_362,
    "vgg13": 9_413_066,
    "vgg16": 14_724_042,
    "vgg19": 20_035_018,
    "digitsnet": 140_458,
}


def test_zoo_covers_every_teacher() -> None:
    assert set(ZOO_PARAMS_10_CLASSES) == set(TEACHERS)


@pytest.mark.parametrize("name", sorted(ZOO_PARAMS_10_CLASSES))
def test_zoo_param_counts_exact(name: str) -> None:
    arch = zoo_arch(name)
    assert arch.params == ZOO_PARAMS_10_CLASSES[name]
    params, flops, out = measured(arch)
    assert params == arch.params
    assert flops == arch.flops
    assert out.shape == (1, 10)
    assert sum(arch.layer_params()) == arch.params and sum(arch.layer_flops()) == arch.flops


def test_resnet_flops_are_the_published_macs() -> None:
    # CIFAR_SHAPE ResNet-18 is 0.56 GMACs, ResNet-20 41 MMACs (2 FLOPs per MAC here)
    assert zoo_arch("resnet18").flops == 2 * 555_422_720
    assert zoo_arch("resnet20").flops == 2 * 40_813_184


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "digitsnet", "resnet20"])
def test_zoo_counts_for_100_classes(name: str) -> None:
    a10, a100 = zoo_arch(name, 10), zoo_arch(name, 100)
    in_features = a10.shapes()[-1].in_features
    assert a100.params - a10.params == 90 * (in_features + 1)
    assert a100.layers[-1].out == 100 and not a100.layers[-1].relu
    params, flops, _ = measured(a100)
    assert (params, flops) == (a100.params, a100.flops)


def test_zoo_origins_and_unknown_name() -> None:
    for name in TEACHERS:
        arch = zoo_arch(name)
        assert [l.origin for l in arch.layers] == list(range(len(arch)))
        assert arch.name == name
    with pytest.raises(KeyError, match="resnet18"):
        teacher_architecture("resnet19")
