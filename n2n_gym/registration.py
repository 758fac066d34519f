"""The registered environments: every teacher / data-set pair of the N2N paper, the
TAS ResNets and the embedded default."""

from __future__ import annotations

import gymnasium as gym

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
}


# your own network as the teacher: gym.make(CUSTOM_ENV_ID, teacher_module=model, dataset=...)
CUSTOM_ENV_ID = "N2N-Custom-v0"


def register_envs() -> None:
    if CUSTOM_ENV_ID not in gym.registry:
        gym.register(CUSTOM_ENV_ID, entry_point="n2n_gym.env:N2NEnv",
                     kwargs={"teacher": "custom", "dataset": "digits"}, nondeterministic=False)
    for env_id, (teacher, dataset, _) in ENVS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="n2n_gym.env:N2NEnv",
                         kwargs={"teacher": teacher, "dataset": dataset}, nondeterministic=False)
