"""The catalogue: which teacher on which data set each environment id stands for.

Every teacher / data-set pair of the N2N paper, the TAS ResNets and the embedded default.
It lives with the teachers (the registry of pinned teachers and the training messages name
env ids); :mod:`n2n_gym.envs.registration` registers each id with Gymnasium.
"""

from __future__ import annotations

DEFAULT_ENV_ID = "N2N-DigitsNet-Digits-v0"

# id -> (teacher, dataset, note)
ENVS: dict[str, tuple[str, str, str]] = {
    DEFAULT_ENV_ID: ("digitsnet", "digits", "embedded default: scikit-learn digits, installs with the package"),
    "N2N-VGG13-MNIST-v0": ("vgg13", "mnist", "paper"),
    "N2N-VGG11-CIFAR10-v0": ("vgg11", "cifar10", "paper"),
    "N2N-VGG19-CIFAR10-v0": ("vgg19", "cifar10", "paper"),
    "N2N-ResNet18-CIFAR10-v0": ("resnet18", "cifar10", "paper"),
    "N2N-ResNet34-CIFAR10-v0": ("resnet34", "cifar10", "paper"),
    "N2N-ResNet18-SVHN-v0": ("resnet18", "svhn", "paper"),
    "N2N-ResNet18-CIFAR100-v0": ("resnet18", "cifar100", "paper"),
    "N2N-ResNet34-CIFAR100-v0": ("resnet34", "cifar100", "paper"),
    "N2N-ResNet20-CIFAR10-v0": ("resnet20", "cifar10", "TAS"),
    "N2N-ResNet56-CIFAR10-v0": ("resnet56", "cifar10", "TAS"),
    # v1: the reward's protocol chosen by the fidelity ladder (benchmarks/fidelity.py)
    "N2N-DigitsNet-Digits-v1": ("digitsnet", "digits", "embedded default, protocol chosen by the fidelity ladder"),
    # v2 / v1: calibrated protocols picked by the study's final rule on both envs
    "N2N-DigitsNet-Digits-v2": ("digitsnet", "digits", "embedded default, calibrated protocol of the fidelity ladder"),
    "N2N-ResNet20-CIFAR10-v1": ("resnet20", "cifar10", "TAS, calibrated protocol of the fidelity ladder"),
}

#: The evaluation protocol of each id whose default is not "fast" (n2n_gym.evaluation.protocols):
#: a new default protocol changes the reward of the same actions, so it comes with a new version.
DEFAULT_PROTOCOLS: dict[str, str] = {
    "N2N-DigitsNet-Digits-v1": "digits-v1",
    "N2N-DigitsNet-Digits-v2": "digits-v2",
    "N2N-ResNet20-CIFAR10-v1": "resnet20-v1",
}


# your own network as the teacher: gym.make(CUSTOM_ENV_ID, teacher_module=model, dataset=...)
CUSTOM_ENV_ID = "N2N-Custom-v0"
