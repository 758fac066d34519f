"""n2n_gym.evaluation.protocols: the fields and their checks, the optional fields and the stability of
cache keys."""

from __future__ import annotations

import dataclasses

import pytest

from n2n_gym.evaluation.protocols import PROTOCOLS, Protocol

ORIGINAL_FIELDS = {"name", "init", "epochs", "train_images", "val_images", "test_images", "batch_size", "lr",
                   "weight_decay", "augment"}


@pytest.mark.parametrize("name", ["fast", "paper", "tiny"])
def test_the_existing_protocols_keep_their_dict_and_so_their_cache_keys(name):
    assert set(PROTOCOLS[name].to_dict()) == ORIGINAL_FIELDS
    assert Protocol.from_dict(PROTOCOLS[name].to_dict()) == PROTOCOLS[name]


def test_epochs_zero_scores_inherited_weights_only():
    assert dataclasses.replace(PROTOCOLS["tiny"], epochs=0).epochs == 0  # bn-only: no training
    assert Protocol.from_dict(PROTOCOLS["digits-v1"].to_dict()) == PROTOCOLS["digits-v1"]


def test_optional_fields_appear_only_when_set_and_round_trip():
    p = dataclasses.replace(PROTOCOLS["fast"], name="x", loss="kd", lr_drop=True, bn_recalibration=512)
    d = p.to_dict()
    assert (d["loss"], d["lr_drop"], d["bn_recalibration"]) == ("kd", True, 512)
    assert "optimizer" not in d and "cosine" not in d and "precision" not in d  # at their defaults: left out
    b = dataclasses.replace(PROTOCOLS["fast"], name="b", precision="bf16")
    assert b.to_dict()["precision"] == "bf16" and Protocol.from_dict(b.to_dict()) == b
    assert Protocol.from_dict(d) == p
    o = dataclasses.replace(PROTOCOLS["fast"], name="o", optimizer="sgd", cosine=True)
    assert (o.to_dict()["optimizer"], o.to_dict()["cosine"]) == ("sgd", True) and Protocol.from_dict(o.to_dict()) == o
    s = dataclasses.replace(PROTOCOLS["fast"], name="s", init="supernet", supernet="ab" * 32, epochs=0)
    assert s.to_dict()["supernet"] == "ab" * 32 and Protocol.from_dict(s.to_dict()) == s
    c = dataclasses.replace(PROTOCOLS["fast"], name="c", calibration=[0.7, 0.2, 0.25, 0.1])  # as a record has it
    assert c.calibration == (0.7, 0.2, 0.25, 0.1) and hash(c)  # a frozen protocol stays hashable
    assert c.to_dict()["calibration"] == [0.7, 0.2, 0.25, 0.1] and Protocol.from_dict(c.to_dict()) == c
    assert c.estimate(0.5) == pytest.approx(0.8) and PROTOCOLS["fast"].estimate(0.5) == 0.5


@pytest.mark.parametrize("change, error, match", [
    ({"loss": "l1"}, ValueError, "loss"),
    ({"bn_recalibration": -1}, ValueError, "bn_recalibration"),
    ({"lr_drop": 1}, TypeError, "lr_drop"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"cosine": "yes"}, TypeError, "cosine"),
    ({"cosine": True, "lr_drop": True}, ValueError, "two lr schedules"),
    ({"precision": "fp16"}, ValueError, "precision"),
    ({"epochs": 0, "init": "random"}, ValueError, "init='inherit'"),
    ({"init": "supernet"}, ValueError, "go together"),  # which supernet?
    ({"supernet": "ab" * 32}, ValueError, "go together"),  # a supernet the student would not use
    ({"init": "supernet", "supernet": "AB" * 32}, ValueError, "sha256"),
    ({"init": "supernet", "supernet": "ab" * 31}, ValueError, "sha256"),
    ({"init": "supernet", "supernet": 7}, ValueError, "sha256"),
    ({"calibration": [0.7, 0.2]}, ValueError, "intercept, slope, x_min, chance"),
    ({"calibration": [0.7, -0.2, 0.2, 0.1]}, ValueError, "slope"),
    ({"calibration": "0.7,0.2,0.2,0.1"}, TypeError, "calibration"),
    ({"calibration": {0.7, 0.2, 0.25, 0.1}}, TypeError, "calibration"),  # a set: no order
    ({"calibration": [True, 1, 0.2, 0.1]}, TypeError, "intercept"),
    ({"calibration": ["0.7", 0.2, 0.2, 0.1]}, TypeError, "intercept"),
    ({"calibration": [[0.7], 0.2, 0.2, 0.1]}, TypeError, "intercept"),
])
def test_bad_optional_fields_fail_where_written(change, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(PROTOCOLS["fast"], **change)


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="unknown Protocol fields .'epoch'."):
        Protocol.from_dict({**PROTOCOLS["fast"].to_dict(), "epoch": 3})
    with pytest.raises(TypeError):
        Protocol.from_dict(["fast"])


TINY = PROTOCOLS["tiny"]


@pytest.mark.parametrize("field, value, error", [
    ("lr", 0.0, ValueError), ("lr", float("inf"), ValueError), ("lr", float("nan"), ValueError),
    ("lr", "1e-3", TypeError), ("epochs", -1, ValueError), ("batch_size", 0, ValueError),
    ("train_images", 0, ValueError), ("weight_decay", -1.0, ValueError), ("init", "zeros", ValueError),
    ("augment", "no", TypeError),
])
def test_protocol_fields_are_checked(field, value, error):
    with pytest.raises(error, match=f"Protocol {field}"):
        dataclasses.replace(TINY, **{field: value})


def test_a_protocol_that_reuses_a_registered_name_with_other_fields_is_refused():
    """Records and leaderboards name a protocol by its name (break-it 3 #2: a calibrated 'tiny'
    was recorded as 'tiny', and validate then failed it)."""
    from n2n_gym.evaluation.protocols import get_protocol

    assert get_protocol(PROTOCOLS["tiny"]) is PROTOCOLS["tiny"]
    with pytest.raises(ValueError, match=r"named 'tiny' but differs .* \['calibration'\].*own name"):
        get_protocol(dataclasses.replace(TINY, calibration=[0.5, 0.5, 0.5, 0.1]))
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        get_protocol(dataclasses.replace(TINY, lr=1.0))
    mine = dataclasses.replace(TINY, name="tiny-calibrated", calibration=[0.5, 0.5, 0.5, 0.1])
    assert get_protocol(mine) is mine
    assert dataclasses.replace(TINY, name="a", calibration=[-0.0, 0.5, 0.5, 0.1]).to_dict() == \
        dataclasses.replace(TINY, name="a", calibration=[0.0, 0.5, 0.5, 0.1]).to_dict()  # one cache key
