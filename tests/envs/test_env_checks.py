"""n2n_gym.envs.checks: every env argument and reset option fails at construction (or at reset)
with the argument named and the fix; start architectures are checked against the teacher.

(The property-based tests of the same contract are in tests/test_properties.py.)"""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest

import n2n_gym
from n2n_gym.envs.env import N2NEnv
from n2n_gym.ir.zoo import teacher_architecture


@pytest.mark.parametrize("value, error, match", [
    ("10", TypeError, r"min_width must be an int, got str '10' \(pass min_width=10 without quotes\)"),
    (2.5, TypeError, "min_width must be an int"),
    (True, TypeError, "min_width must be an int"),
    (-3, ValueError, "min_width must be >= 1"),
])
def test_min_width_type_and_range(value, error, match):
    with pytest.raises(error, match=match):
        N2NEnv(min_width=value)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"eval_seed": -1}, ValueError, "eval_seed must be >= 0"),
    ({"eval_seed": "0"}, TypeError, "eval_seed must be an int"),
    ({"penalty_horizon": 0}, ValueError, "penalty_horizon must be >= 1"),
    ({"episodes_per_update": 0}, ValueError, "episodes_per_update must be >= 1"),
    ({"ratios": (0.5, float("nan"), 1.0)}, ValueError, "finite"),
    ({"ratios": ("0.5", 1.0)}, TypeError, "must be a number"),
    ({"ratios": (0.5,)}, ValueError, "including 1.0"),
    ({"ratios": 0.5}, TypeError, "ratios must be"),
    ({"device": "gpu"}, ValueError, "device 'gpu' is not a torch device"),
    ({"device": 0}, TypeError, "device must be"),
    ({"cache": 3}, TypeError, "cache must be True"),
    ({"progress": "yes"}, TypeError, "progress must be True or False"),
    ({"teacher_checkpoint": "/nonexistent/t.pt"}, FileNotFoundError, "is not a file"),
    ({"teacher_recipe": 5}, TypeError, "teacher_recipe must be"),
    ({"protocol": 3}, TypeError, "protocol must be"),
    ({"stage": "shrnk"}, ValueError, "stage must be one of"),
    ({"teacher": 3}, TypeError, "teacher must be"),
    ({"start_architecture": 3}, TypeError, "start_architecture must be"),
    ({"start_architecture": "{not json"}, ValueError, "not valid architecture JSON"),
    ({"start_architecture": "/nonexistent/arch.json"}, ValueError, "neither architecture JSON nor a readable file"),
])
def test_env_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        N2NEnv(**kwargs)


def test_cuda_device_without_cuda_is_refused_at_make():
    import torch

    if torch.cuda.is_available():
        N2NEnv(device="cuda")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            N2NEnv(device="cuda")


def test_start_architecture_of_another_teacher_is_refused_at_make():
    digits_arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="does not descend from the teacher"):
        N2NEnv(teacher="resnet20", dataset="digits", stage="shrink", start_architecture=digits_arch)
    resnet = teacher_architecture("resnet20", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="does not descend from the teacher: layer 0: kind"):
        N2NEnv(teacher="digitsnet", start_architecture=dataclasses.replace(
            resnet, layers=(dataclasses.replace(digits_arch.layers[0], kind="maxpool", out=0),) + digits_arch.layers[1:]))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["layers"][0].update(out=d["layers"][0]["out"] + 1), "exceeds its origin's"),
    (lambda d: d["layers"][1].update(kernel=5), "kernel 5 differs"),
    (lambda d: d["layers"].__setitem__(slice(0, 2), [d["layers"][1], d["layers"][0]]), "keep the teacher's order"),
    (lambda d: d["layers"].pop(), "end with the teacher's classifier"),
])
def test_start_architecture_is_checked_layer_by_layer(edit, match):
    d = json.loads(teacher_architecture("digitsnet", (1, 8, 8), 10).to_json())
    edit(d)
    with pytest.raises(ValueError, match=match):
        N2NEnv(start_architecture=json.dumps(d))


def test_a_student_of_the_teacher_is_a_valid_start():
    arch = teacher_architecture("resnet20", (1, 8, 8), 10)
    env = N2NEnv(teacher="resnet20", stage="joint")
    rng = np.random.default_rng(0)
    actions = [int(rng.choice(np.flatnonzero(m))) for m in env._layer_masks]
    student = env.student_architecture(actions)
    env2 = N2NEnv(teacher="resnet20", stage="shrink", start_architecture=student)
    assert env2.num_layers == len(student) <= len(arch)


def test_reset_options_are_checked():
    env = N2NEnv()
    with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['udpate'\]; valid options: 'update'"):
        env.reset(options={"udpate": 3})
    with pytest.raises(ValueError, match="'update' must be >= 0"):
        env.reset(options={"update": -1})
    with pytest.raises(TypeError, match="must be an int"):
        env.reset(options={"update": "3"})
    env.reset(options={"update": 4})
    assert env._update == 4
    env.reset(options={})
    assert env._update == 0


def test_a_misspelt_teacher_recipe_field_names_the_right_one():
    with pytest.raises(TypeError, match=r"teacher_recipe has no field 'epoch' \(did you mean 'epochs'\?\)"):
        gym.make("N2N-DigitsNet-Digits-v0", teacher_recipe={"epoch": 3})


def test_unknown_argument_names_it_and_suggests() -> None:
    with pytest.raises(TypeError, match=r"'protocl' \(did you mean 'protocol'\?\)"):
        gym.make(n2n_gym.DEFAULT_ENV_ID, protocl="tiny")
    with pytest.raises(TypeError, match="'start_arch'.*did you mean 'start_architecture'"):
        N2NEnv(start_arch=None)
    with pytest.raises(TypeError, match="'zzz'"):
        N2NEnv(zzz=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stage": "prune"}, "stage"),
        ({"penalty": "soft"}, "penalty"),
        ({"illegal_action": "ignore"}, "illegal_action"),
        ({"protocol": "slow"}, "protocol"),
        ({"ratios": (0.5, 0.7)}, "1.0"),
        ({"ratios": "linear"}, "ratios"),
        ({"dataset": "imagenet"}, "imagenet"),
        ({"constraints": {"max_param": 5}}, "max_param"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises((ValueError, KeyError), match=match):
        N2NEnv(**kwargs)
