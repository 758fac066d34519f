"""n2n_gym.teachers.catalog: every env id names a teacher of the zoo and a data set of DATASETS,
follows ``N2N-<Teacher>-<Data>-vN``, and each id with its own default protocol names a protocol
of PROTOCOLS."""

from __future__ import annotations

import re

import pytest

import n2n_gym
from n2n_gym.data.datasets import DATASETS
from n2n_gym.evaluation.protocols import PROTOCOLS
from n2n_gym.ir.zoo import TEACHERS, teacher_architecture
from n2n_gym.teachers.catalog import (
    CUSTOM_ENV_ID,
    DEFAULT_ENV_ID,
    DEFAULT_PROTOCOLS,
    ENVS,
)

ID = re.compile(r"^N2N-(?P<teacher>[A-Za-z0-9]+)-(?P<data>[A-Za-z0-9]+)-v(?P<version>0|[1-9][0-9]*)$")


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_each_entry_is_a_zoo_teacher_on_a_known_data_set(env_id):
    teacher, data, note = ENVS[env_id]
    assert teacher in TEACHERS, f"{env_id}: teacher {teacher!r} is not in the zoo"
    assert data in DATASETS, f"{env_id}: data set {data!r} is not in DATASETS"
    assert isinstance(note, str) and note.strip()
    info = DATASETS[data]
    arch = teacher_architecture(teacher, input_shape=info.input_shape, num_classes=info.num_classes)
    arch.shapes()  # the teacher is buildable for its data set's images
    assert arch.input_shape == info.input_shape and arch.num_classes == info.num_classes


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_each_id_spells_its_teacher_and_data_set(env_id):
    match = ID.match(env_id)
    assert match, f"{env_id} does not follow N2N-<Teacher>-<Data>-vN"
    teacher, data, _ = ENVS[env_id]
    assert (match["teacher"].lower(), match["data"].lower()) == (teacher, data)


def test_ids_differ_beyond_letter_case():
    assert len({env_id.lower() for env_id in ENVS}) == len(ENVS)


def test_default_protocols_name_catalogued_ids_and_known_protocols():
    assert DEFAULT_PROTOCOLS, "no id with its own default protocol"
    for env_id, protocol in DEFAULT_PROTOCOLS.items():
        assert env_id in ENVS, f"{env_id} has a default protocol but is not in ENVS"
        assert protocol in PROTOCOLS, f"{env_id}: protocol {protocol!r} is not in PROTOCOLS"
        assert PROTOCOLS[protocol].name == protocol
        assert ID.match(env_id)["version"] != "0"  # a new default protocol comes with a new version


def test_the_default_and_the_custom_id():
    assert DEFAULT_ENV_ID in ENVS and ENVS[DEFAULT_ENV_ID][:2] == ("digitsnet", "digits")  # installs with the package
    assert DEFAULT_ENV_ID not in DEFAULT_PROTOCOLS
    assert CUSTOM_ENV_ID not in ENVS and re.fullmatch(r"N2N-Custom-v[0-9]+", CUSTOM_ENV_ID)
    assert n2n_gym.ENVS is ENVS and n2n_gym.DEFAULT_ENV_ID == DEFAULT_ENV_ID  # what the package exports
