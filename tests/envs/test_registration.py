"""n2n_gym.envs.registration (and n2n_gym.teachers.catalog): the registered ids, with and without the
module prefix; env versions and their default evaluation protocols: a v1 id's reward comes from
the protocol the fidelity ladder chose, and the runner, the agents and the records use the id's
own protocol unless told otherwise."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_digits_env

import n2n_gym
from n2n_gym.agents.n2n import Args
from n2n_gym.bench import runner
from n2n_gym.data.datasets import load_dataset
from n2n_gym.envs.env import N2NEnv
from n2n_gym.envs.registration import default_protocol, resolve_protocol
from n2n_gym.evaluation.protocols import PROTOCOLS

V0, V1 = "N2N-DigitsNet-Digits-v0", "N2N-DigitsNet-Digits-v1"


def test_each_id_has_its_own_default_protocol():
    assert default_protocol(V0) == "fast"
    assert default_protocol(V1) == "digits-v1"
    assert gym.make(V1).unwrapped.protocol == PROTOCOLS["digits-v1"]
    assert gym.make(V1, protocol="tiny").unwrapped.protocol.name == "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Gymnasium: "v0 is out of date"
        assert gym.make(V0).unwrapped.protocol.name == "fast"


def test_every_v0_id_stays_makeable():
    for env_id in n2n_gym.ENVS:
        if env_id.endswith("-v0"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                gym.make(env_id).close()  # loads nothing: data and teacher come at reset()


def test_an_unregistered_id_is_named_in_the_error():
    assert resolve_protocol("N2N-Nope-v0", "tiny") == "tiny"
    with pytest.raises(ValueError, match="N2N-Nope-v0"):
        resolve_protocol("N2N-Nope-v0", None)
    with pytest.raises(ValueError, match="N2N-Nope-v0"):
        Args(env_id="N2N-Nope-v0")


def test_agents_default_to_the_ids_protocol():
    assert Args(env_id=V1).protocol == "digits-v1"
    assert Args(env_id=V0).protocol == "fast"
    assert Args(env_id=V1, protocol="tiny").protocol == "tiny"


def test_digits_v1_is_the_ladder_rung_that_was_measured():
    """The protocol of N2N-DigitsNet-Digits-v1 must stay the ladder's "mse-4k" rung on the digits
    training split: its figures (rho 0.83 against 30-epoch training) were measured for that one."""
    from n2n_gym.benchmarks.fidelity import ladder

    train_split = len(load_dataset("digits").train_idx)
    rung = ladder(train_split)["mse-4k"]
    assert dataclasses.replace(rung, name="digits-v1") == PROTOCOLS["digits-v1"]


STUDIES = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "fidelity"


@pytest.mark.parametrize("env_id, study", [("N2N-DigitsNet-Digits-v2", "n2n-digitsnet-digits-v0"),
                                           ("N2N-ResNet20-CIFAR10-v1", "n2n-resnet20-cifar10-v0")])
def test_calibrated_ids_use_the_protocol_their_study_picked(env_id, study):
    """A new version's protocol must be, field for field, the rung its fidelity study picked with
    the study's full calibration fit, on the teacher and data the study measured: its figures
    hold for that protocol only."""
    from n2n_gym.benchmarks.fidelity import choose, ladder
    from n2n_gym.teachers.registry import env_teacher

    folder = STUDIES / study
    summary = json.loads((folder / "ladder.json").read_text())
    meta = json.loads((folder / "students.json").read_text())
    choice = summary["choice"]
    assert choice == choose(summary) and choice["rule_met"] and choice["calibrated"]
    assert summary["calibrated"][choice["protocol"]]["students"] >= 40
    fit = summary["calibrated"][choice["protocol"]]["fit"]
    rung = ladder(meta["train_split"])[choice["protocol"]]
    name = default_protocol(env_id)
    expected = dataclasses.replace(rung, name=name, calibration=(fit["intercept"], fit["slope"], fit["x_min"],
                                                                 fit["chance"]), calibrated_for=meta["teacher_sha256"])
    assert PROTOCOLS[name] == expected
    teacher, dataset, pin = env_teacher(env_id)
    assert (teacher, dataset) == env_teacher(meta["env"])[:2]
    assert pin is not None and (pin.sha256, pin.data_digest) == (meta["teacher_sha256"], meta["data_digest"])


def test_a_bench_record_names_the_protocol_used(tmp_path, monkeypatch):
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "runs.jsonl"
    rc = runner.main(["--env", V1, "--agent", "random", "--budget", "2", "--results", str(results)])
    assert rc == 0
    (record,) = [r for r in runner.read_records(results)]
    assert (record["env_id"], record["protocol"]) == (V1, "digits-v1")
    # resuming finds the run under the id's own protocol, so --skip-existing skips it
    rc = runner.main(["--env", V1, "--agent", "random", "--budget", "2", "--results", str(results),
                      "--skip-existing"])
    assert rc == 0 and len(runner.read_records(results)) == 1


def test_make_with_module_prefix() -> None:
    env = gym.make("n2n_gym:N2N-ResNet34-CIFAR10-v0")
    u = env.unwrapped
    assert isinstance(u, N2NEnv) and env.spec.id == "N2N-ResNet34-CIFAR10-v0"
    assert u.teacher_architecture.params == 21_282_122 and u.num_layers == len(u.teacher_architecture)
    assert u._evaluator is None
    # reset provisions the teacher (too long to train here: tests/teachers/test_teacher.py);
    # a deterministic reset on the default env
    env = make_digits_env()
    obs, info = env.reset(seed=1)
    obs2, _ = env.reset(seed=1)
    assert np.array_equal(obs, obs2) and obs.dtype == np.float32


def test_default_env_id_is_registered() -> None:
    assert n2n_gym.DEFAULT_ENV_ID in gym.registry
    assert set(n2n_gym.ENVS) <= set(gym.registry)


def test_a_calibration_fitted_on_another_teacher_is_refused_at_reset():
    """resnet20-v1's map on the digits teacher would turn digits accuracies into CIFAR-10 estimates."""
    env = gym.make("N2N-DigitsNet-Digits-v2", protocol="resnet20-v1")
    with pytest.raises(ValueError, match="calibrated for the teacher with sha256 4c11bb77cd61"):
        env.reset(seed=0)
    with pytest.raises(ValueError, match="needs a calibration"):
        dataclasses.replace(PROTOCOLS["fast"], name="x", calibrated_for="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        dataclasses.replace(PROTOCOLS["digits-v2"], name="x", calibrated_for="digitsnet")


def test_the_module_prefixed_id_is_the_id_itself(tmp_path, monkeypatch):
    """gym.make("n2n_gym:<id>") is the README's idiom; bench, compress and records take it too and
    name the id itself (a prefixed id had no protocol default, no version and failed validate)."""
    from n2n_gym.compress import default_final_epochs
    from n2n_gym.envs.registration import canonical_env_id

    assert canonical_env_id("n2n_gym:N2N-ResNet20-CIFAR10-v1") == "N2N-ResNet20-CIFAR10-v1"
    assert default_protocol("n2n_gym:N2N-ResNet20-CIFAR10-v1") == "resnet20-v1"
    assert default_final_epochs("n2n_gym:N2N-ResNet20-CIFAR10-v1") == 20
    assert Args(env_id="n2n_gym:" + V1).env_id == V1
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "runs.jsonl"
    assert runner.main(["--env", "n2n_gym:" + V1, "--agent", "random", "--budget", "1", "--results", str(results),
                        "--no-progress"]) == 0
    (record,) = runner.read_records(results)
    assert (record["env_id"], record["env_version"], record["protocol"]) == (V1, 1, "digits-v1")


def test_a_protocol_given_twice_is_refused():
    """compress let env_kwargs' protocol win for the N2N search but --protocol for the others."""
    for key in ("protocol", "device"):
        with pytest.raises(ValueError, match=f"pass {key} as its own setting"):
            Args(env_id=V1, env_kwargs={key: "fast" if key == "protocol" else "cpu"})
