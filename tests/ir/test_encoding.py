"""n2n_gym.ir.encoding: the per-layer observation table (one row a layer, every value in [0, 1],
zero rows past the architecture) and its three observation modes, for the embedded digits
teacher and a ResNet of the zoo (architectures only: nothing is trained)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from n2n_gym.ir.arch import LAYER_KINDS, SHORTCUT
from n2n_gym.ir.edits import layer_rules
from n2n_gym.ir.encoding import (
    COLUMN,
    FEATURES,
    NUM_FEATURES,
    OBSERVATIONS,
    STAGES,
    encode_observation,
    observation_space,
    static_features,
    width_scale,
)
from n2n_gym.ir.zoo import teacher_architecture

TEACHERS = {
    "digitsnet": teacher_architecture("digitsnet", input_shape=(1, 8, 8), num_classes=10),
    "resnet20": teacher_architecture("resnet20"),
}
DYNAMIC = ("decided", "removed", "ratio", "current")  # set by the env during an episode


def _table(name: str, extra_rows: int = 3, stage: str = "remove") -> np.ndarray:
    arch = TEACHERS[name]
    return static_features(arch, len(arch) + extra_rows, stage, width_scale(arch))


def test_the_columns():
    assert NUM_FEATURES == len(FEATURES) == len(COLUMN) == 24
    assert [COLUMN[f] for f in FEATURES] == list(range(NUM_FEATURES))
    assert {f"type_{k}" for k in LAYER_KINDS} | {f"stage_{s}" for s in STAGES} <= set(FEATURES)
    assert OBSERVATIONS == ("table", "flat", "dict")


def test_width_scale_is_the_widest_layer_or_the_input():
    assert width_scale(TEACHERS["digitsnet"]) == 128
    assert width_scale(TEACHERS["resnet20"]) == 64
    assert width_scale(teacher_architecture("digitsnet", input_shape=(300, 8, 8))) == 300


@pytest.mark.parametrize("name", sorted(TEACHERS))
@pytest.mark.parametrize("stage", STAGES)
def test_static_table_rows(name, stage):
    arch = TEACHERS[name]
    n = len(arch)
    table = _table(name, stage=stage)
    assert table.shape == (n + 3, NUM_FEATURES) and table.dtype == np.float32
    assert table.min() >= 0 and table.max() <= 1
    assert not table[n:].any()  # rows past the architecture are 0, "present" included
    rows = table[:n]
    assert (rows[:, COLUMN["present"]] == 1).all()
    types = rows[:, [COLUMN[f"type_{k}"] for k in LAYER_KINDS]]
    assert (types.sum(1) == 1).all()  # one-hot
    assert [LAYER_KINDS[i] for i in types.argmax(1)] == [l.kind for l in arch.layers]
    assert (rows[:, COLUMN[f"stage_{stage}"]] == 1).all()
    assert rows[:, [COLUMN[f"stage_{s}"] for s in STAGES]].sum() == n
    assert not rows[:, [COLUMN[c] for c in DYNAMIC]].any()
    np.testing.assert_allclose(rows[:, COLUMN["position"]], np.arange(n) / (n - 1), rtol=1e-6)
    shapes, scale = arch.shapes(), width_scale(arch)
    np.testing.assert_allclose(rows[:, COLUMN["outputs"]], [min(s.out_channels / scale, 1) for s in shapes],
                               rtol=1e-6)
    np.testing.assert_allclose(rows[:, COLUMN["inputs"]], [min(s.in_channels / scale, 1) for s in shapes], rtol=1e-6)
    rules = layer_rules(arch)
    assert rows[:, COLUMN["removable"]].tolist() == [float(r.removable) for r in rules]
    assert rows[:, COLUMN["shrinkable"]].tolist() == [float(r.shrinkable) for r in rules]
    assert rows[:, COLUMN["shortcut"]].tolist() == [float(l.role == SHORTCUT) for l in arch.layers]
    assert rows[:, [COLUMN["skip_start"], COLUMN["skip_end"]]].tolist() == [list(map(float, f))
                                                                           for f in arch.skip_flags()]


def test_resnet_rows_mark_shortcuts_and_skips_digits_rows_none():
    resnet, digits = _table("resnet20"), _table("digitsnet")
    assert resnet[:, COLUMN["shortcut"]].sum() == 2  # the two projection shortcuts of ResNet-20
    body = resnet[:, COLUMN["shortcut"]] == 0
    # a residual starts and ends once per block of the body (9 blocks); a shortcut has both flags
    assert resnet[body, COLUMN["skip_start"]].sum() == resnet[body, COLUMN["skip_end"]].sum() == 9
    assert (resnet[~body][:, [COLUMN["skip_start"], COLUMN["skip_end"]]] == 1).all()
    assert not digits[:, [COLUMN["shortcut"], COLUMN["skip_start"], COLUMN["skip_end"]]].any()
    # the 3x3 convs: kernel 3/7, padding 1/3; the strided ones stride 2/4
    stem = resnet[0]
    assert stem[COLUMN["kernel"]] == pytest.approx(3 / 7) and stem[COLUMN["padding"]] == pytest.approx(1 / 3)
    assert sorted(set(resnet[:23, COLUMN["stride"]].round(4))) == [0.25, 0.5]


def test_more_layers_than_rows_is_refused():
    arch = TEACHERS["resnet20"]
    with pytest.raises(ValueError, match=r"architecture has 23 layers, more than max_layers=22"):
        static_features(arch, 22, "remove", width_scale(arch))


@pytest.mark.parametrize("name", sorted(TEACHERS))
@pytest.mark.parametrize("mode", OBSERVATIONS)
def test_each_mode_has_its_shape_and_dtype_and_holds_its_observation(name, mode):
    max_layers, num_actions = len(TEACHERS[name]) + 3, 11
    table = _table(name)
    mask = np.zeros(num_actions, dtype=np.int8)
    mask[[0, 4]] = 1
    space = observation_space(mode, max_layers, num_actions)
    obs = encode_observation(table, mode, mask)
    assert space.contains(obs)
    flat_shape = (max_layers * NUM_FEATURES,)
    if mode == "table":
        assert isinstance(space, spaces.Box) and space.shape == (max_layers, NUM_FEATURES)
        assert space.dtype == np.float32 and obs.dtype == np.float32 and np.array_equal(obs, table)
    elif mode == "flat":
        assert isinstance(space, spaces.Box) and space.shape == flat_shape and space.dtype == np.float32
        assert obs.dtype == np.float32 and np.array_equal(obs, table.reshape(-1))  # row-major
        assert np.array_equal(obs[COLUMN["outputs"]::NUM_FEATURES], table[:, COLUMN["outputs"]])
    else:
        assert isinstance(space, spaces.Dict) and set(space.spaces) == {"observation", "action_mask"}
        assert space["observation"].shape == flat_shape and space["observation"].dtype == np.float32
        assert space["action_mask"].shape == (num_actions,) and space["action_mask"].dtype == bool
        assert set(obs) == {"observation", "action_mask"}
        assert np.array_equal(obs["observation"], table.reshape(-1))
        assert obs["action_mask"].dtype == bool and obs["action_mask"].tolist() == mask.astype(bool).tolist()
    for box in (space.spaces.values() if mode == "dict" else [space]):
        assert (box.low == 0).all() and (box.high == 1).all()


@pytest.mark.parametrize("mode", OBSERVATIONS)
def test_an_observation_is_always_a_copy(mode):
    table, mask = _table("digitsnet"), np.ones(3, dtype=bool)
    before_table, before_mask = table.copy(), mask.copy()
    obs = encode_observation(table, mode, mask)
    for array in (obs.values() if mode == "dict" else [obs]):
        array[...] = 0 if array.dtype != bool else False
    assert np.array_equal(table, before_table) and np.array_equal(mask, before_mask)


def test_an_unknown_mode_is_refused_naming_the_modes():
    with pytest.raises(ValueError, match=r"observation must be one of \['table', 'flat', 'dict'\], got 'image'"):
        observation_space("image", 9, 2)
