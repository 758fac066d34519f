"""The registered environments: every teacher / data-set pair of the N2N paper, the
TAS ResNets and the embedded default."""

from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.registration import WrapperSpec

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


# gym.make's outermost wrapper: env.action_masks() on what gym.make returns (Gymnasium 1.x
# wrappers forward no attributes; sb3-contrib's ActionMasker calls it on the outermost one)
ACTION_MASKS = WrapperSpec("ActionMasks", "n2n_gym.adapters:ActionMasks", {})


def register_envs() -> None:
    ids = {CUSTOM_ENV_ID: ("custom", "digits")} | {k: (teacher, data) for k, (teacher, data, _) in ENVS.items()}
    for env_id, (teacher, dataset) in ids.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="n2n_gym.env:N2NEnv", kwargs={"teacher": teacher, "dataset": dataset},
                         nondeterministic=False, additional_wrappers=(ACTION_MASKS,))
