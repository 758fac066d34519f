"""Your own network as the teacher: ``n2n_gym.teachers.importer`` (torch.fx), ``N2N-Custom-v0`` and
``n2n-gym compress --model``, on models this project did not design: torchvision's
``resnet18`` and ``vgg11_bn``, a CIFAR ResNet written like kuangliu/pytorch-cifar, and a
plain ``nn.Sequential`` CNN (random weights, 10 classes, 32x32 inputs from a small
learnable npz or the embedded 8x8 digits); unsupported models are refused by name.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_digits_env
from torch import nn

import n2n_gym
from n2n_gym.ir.build import build
from n2n_gym.ir.students import export_student
from n2n_gym.teachers.importer import (
    UnsupportedModelError,
    import_module,
    weights_digest,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
from conftest import subprocess_env

# ------------------------------------------------------------ kuangliu/pytorch-cifar style
# BasicBlock and ResNet as in kuangliu/pytorch-cifar models/resnet.py; only the stem width is
# an argument (64 there) so the test runs in seconds on a CPU.
KUANGLIU = '''
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super(BasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion*planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion*planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion*planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, width=64):
        super(ResNet, self).__init__()
        self.in_planes = width

        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2*width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4*width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8*width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8*width*block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1]*(num_blocks-1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def cifar_resnet():
    return ResNet(BasicBlock, [2, 1, 1, 1], width=8)
'''


def _kuangliu_namespace() -> dict:
    ns: dict = {}
    exec(compile(KUANGLIU, "kuangliu_resnet.py", "exec"), ns)
    return ns


def plain_cnn(in_channels: int = 3) -> nn.Module:
    """A plain nn.Sequential CNN: conv with bias and no BN, BN, pooling, dropout, two linears."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(24, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32, eps=1e-3), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 1 * 1 if in_channels == 1 else 32 * 4 * 4, 48), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(48, 10))


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "vgg11_bn": lambda: torchvision.models.vgg11_bn(num_classes=10),
    "kuangliu_resnet": lambda: _kuangliu_namespace()["cifar_resnet"](),
    "sequential_cnn": plain_cnn,
}


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine weights, as a trained model has (fresh ones are 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def _make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(MODELS[name]()).eval()


@pytest.fixture(scope="module")
def npz32(tmp_path_factory) -> str:
    """A small learnable 10-class 32x32 RGB data set: per class a smooth random template
    (8x8 upsampled) plus pixel noise."""
    rng = np.random.default_rng(0)
    templates = rng.uniform(40, 215, (10, 8, 8, 3))
    templates = templates.repeat(4, axis=1).repeat(4, axis=2)

    def draw(n):
        y = np.arange(n) % 10
        x = templates[y] + rng.normal(0, 25, (n, 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = draw(1000), draw(100)  # 100 validation images: no small-split warning
    path = tmp_path_factory.mktemp("npz") / "learnable32.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


# ------------------------------------------------------------------------------ import
@pytest.mark.parametrize("name", sorted(MODELS))
def test_import_reproduces_logits(name: str) -> None:
    model = _make(name)
    imported = import_module(model, torch.randn(2, 3, 32, 32))
    arch = imported.architecture
    assert arch.input_shape == (3, 32, 32) and arch.num_classes == 10
    net = imported.build()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for batch in (1, 5):
            x = torch.randn(batch, 3, 32, 32, generator=gen) * 2
            diff = (net(x) - model(x)).abs().max().item()
            assert diff <= 1e-5, diff
    # exact where the folds are (bias into the running mean); eps / identity-BN folds round
    assert imported.max_abs_diff <= (0.0 if name in ("resnet18", "vgg11_bn", "kuangliu_resnet") else 1e-6)
    assert model.training is False  # the module's flags are restored
    assert imported.sha256 == weights_digest(arch, {k: v for k, v in net.state_dict().items()})
    # the IR's counts are exact for the built network
    assert arch.params == sum(p.numel() for p in net.parameters())
    # and tell exactly what changed against the module's own count
    bias_folded = sum(m.bias.numel() for m in model.modules()
                      if isinstance(m, nn.Conv2d) and m.bias is not None)
    identity_bn = 0
    if name == "sequential_cnn":  # its first conv has no BN: an identity BN (2 per channel) stands in
        identity_bn = 2 * 16  # (and its bias is now that BN's beta)
    assert arch.params == imported.module_params - bias_folded + identity_bn
    if name == "resnet18":
        assert arch.params == imported.module_params == 11_181_642
        assert [layer.kind for layer in arch.layers[:2]] == ["conv", "maxpool"]  # ImageNet stem: 7x7/2 + pool
        assert (arch.layers[0].kernel, arch.layers[0].stride) == (7, 2)
        assert sum(layer.role == "shortcut" for layer in arch.layers) == 3
        assert len(arch.blocks()) == 8
    if name == "vgg11_bn":
        assert arch.layers[13].kind == "gap" and arch.layers[13].kernel == 7  # AdaptiveAvgPool2d((7, 7))


def test_bottleneck_resnet50_is_exact() -> None:
    """Bottleneck blocks (3 body convs); in the module's memory format the logits are equal
    bit for bit (the folds are exact and the kernels the same)."""
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet50(num_classes=10)).eval()
    imported = import_module(model, torch.randn(2, 3, 32, 32))
    assert imported.max_abs_diff == 0.0
    assert imported.architecture.params == imported.module_params
    assert len(imported.architecture.blocks()) == 16 and len(imported.architecture) == 56


def test_import_is_training_mode_safe_and_digest_follows_weights() -> None:
    model = _make("kuangliu_resnet").train()
    a = import_module(model, torch.randn(2, 3, 32, 32))
    assert all(m.training for m in model.modules())
    with torch.no_grad():
        model.linear.bias.add_(1.0)
    b = import_module(model, torch.randn(2, 3, 32, 32))
    assert a.architecture == b.architecture and a.sha256 != b.sha256


def test_identity_and_projection_blocks() -> None:
    arch = import_module(_make("kuangliu_resnet"), torch.randn(2, 3, 32, 32)).architecture
    plan = [seg for seg in arch.segments() if seg[0] == "block"]
    assert [shortcut is None for _, _, shortcut in plan] == [True, True, False, False, False]


# ---------------------------------------------------------------------------- refusals
class TransformerBlock(nn.Module):
    """A ViT-style block on conv patches: LayerNorm, attention, GELU MLP."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 5, padding=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PreActBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        x = x + self.body(x)  # no ReLU after the addition
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("model, expected", [
    (TransformerBlock(), ["module `norm1` (LayerNorm)", "module `attn` (MultiheadAttention)",
                          "module `mlp.1` (GELU)", "method .transpose()"]),
    (Concat(), ["function cat() in `<top level>`"]),
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.SiLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 28 * 28, 10)),
     ["module `1` (SiLU)", "module `2` (Conv2d): grouped/depthwise conv (groups=8)"]),
    (PreActBlock(), ["module `body.0` (BatchNorm2d): batch norm that does not directly follow a conv"]),
])
def test_unsupported_models_are_refused_by_name(model, expected) -> None:
    with pytest.raises(UnsupportedModelError) as err:
        import_module(model.eval(), torch.randn(2, 3, 32, 32))
    text = str(err.value)
    first = text.splitlines()[0]
    assert first.startswith(f"Cannot import {type(model).__name__}: ") and first.endswith(":")
    assert first.count(". ") == 0  # one sentence
    for item in expected:
        assert any(line.startswith("  - ") and item in line for line in text.splitlines()[1:]), (item, text)
    assert err.value.nodes and all(f"  - {n}" in text for n in err.value.nodes)


def test_untraceable_model_is_refused_in_one_sentence() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, batch_first=True)
    with pytest.raises(UnsupportedModelError, match=r"^Cannot import TransformerEncoderLayer: torch.fx cannot trace"):
        import_module(layer, torch.randn(2, 3, 32, 32))


# -------------------------------------------------------------------------- the env
def _smallest_students_actions(info) -> int:
    """The lowest allowed action: the smallest width ratio (keeps students cheap to train)."""
    return int(np.flatnonzero(info["action_mask"])[0])


def _episode(env) -> dict:
    obs, info = env.reset(seed=0)
    done = False
    while not done:
        assert env.observation_space.contains(obs)
        obs, reward, done, truncated, info = env.step(_smallest_students_actions(info))
        assert not truncated
    return info


@pytest.mark.parametrize("name", sorted(MODELS))
def test_env_episode_and_export(name: str, npz32: str, tmp_path: pathlib.Path, request) -> None:
    model = _make(name)
    env = gym.make("N2N-Custom-v0", teacher_module=model, dataset=npz32, protocol="tiny", device="cpu",
                   allow_untrained_teacher=True,
                   cache=str(tmp_path / "cache.sqlite"))
    unwrapped = env.unwrapped
    arch = unwrapped.teacher_architecture
    assert env.observation_space.shape[0] == len(arch)
    info = _episode(env)
    teacher = unwrapped.teacher
    assert teacher.architecture == arch and isinstance(teacher.module, nn.Module)
    if name == "sequential_cnn":
        request.getfixturevalue("digits_teacher")
        assert set(info) == set(_episode(make_digits_env(cache=False)))  # every info field, as for zoo envs
    assert info["valid"], info["reason"]
    # the teacher is identified by the content of its architecture and weights
    assert info["teacher_sha256"] == weights_digest(arch, teacher.module.state_dict())
    assert info["teacher_params"] == arch.params > info["params"] > 0
    assert info["teacher_flops"] == arch.flops
    assert info["reward"] == pytest.approx(info["r_c"] * info["r_a"]) and info["protocol"] == "tiny"
    assert not info["cached"]
    assert teacher.data_variant == info["data_variant"] and teacher.name == type(model).__name__
    # the teacher's accuracy is measured on the env's validation split, with its normalisation
    data = unwrapped.evaluator.data
    xv, yv = data.split("val")
    with torch.no_grad():
        want = float((model(data.normalize(xv)).argmax(1) == yv).float().mean())
    assert info["teacher_accuracy"] == pytest.approx(want, abs=1e-6)
    # the cache is keyed by the weights' digest: the same episode again is a hit
    again = _episode(env)
    assert again["cached"] and again["reward"] == info["reward"]
    # masks: the stem and the classifier are never removed, shortcuts never shrink
    masks = info["layer_masks"]
    remove = env.action_space.n - 1
    assert masks[0, remove] == 0 and masks[-1, remove] == 0

    student_arch = n2n_gym.Architecture.from_json(info["architecture"])
    student = build(student_arch).eval()
    paths = export_student(student, tmp_path)
    assert paths["torch.export"].endswith("student.pt2") and paths["onnx"].endswith("student.onnx"), paths
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = student(x)
    torch.testing.assert_close(torch.export.load(tmp_path / "student.pt2").module()(x), expected,
                               rtol=1e-4, atol=1e-4)
    from onnx.reference import ReferenceEvaluator

    got = ReferenceEvaluator(paths["onnx"]).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
    env.close()


def test_custom_env_errors(npz32: str) -> None:
    with pytest.raises(ValueError, match="needs teacher_module"):
        gym.make("N2N-Custom-v0", dataset=npz32)
    with pytest.raises(ValueError, match="gives 1000 outputs but the data set .* has 10 classes"):
        gym.make("N2N-Custom-v0", teacher_module=torchvision.models.resnet18(), dataset=npz32)
    with pytest.raises(ValueError, match=r"images of shape \(1, 8, 8\)"):
        gym.make("N2N-Custom-v0", teacher_module=_make("sequential_cnn"), dataset="digits")
    with pytest.raises(UnsupportedModelError, match="Cannot import Concat"):
        gym.make("N2N-Custom-v0", teacher_module=Concat(), dataset=npz32)
    with pytest.raises(ValueError, match="not both"):
        gym.make("N2N-Custom-v0", teacher="vgg11", teacher_module=_make("sequential_cnn"), dataset=npz32)


def test_factory_spec_with_keyword_arguments(npz32: str) -> None:
    """teacher_module as a JSON-able 'package.module:factory(key=literal)' string (what
    compress --model passes): called with torch seeded to 0, so every process gets the same weights."""
    spec = "torchvision.models:resnet18(num_classes=10)"
    env = gym.make("N2N-Custom-v0", teacher_module=spec, dataset=npz32, protocol="tiny", allow_untrained_teacher=True)
    torch.manual_seed(0)
    direct = import_module(torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32))
    assert env.unwrapped.teacher_architecture == direct.architecture
    assert env.unwrapped.teacher_name == spec
    assert env.unwrapped.teacher.sha256 == direct.sha256
    for bad, match in [("torchvision.models.resnet18", "expected 'package.module:factory'"),
                       ("torchvision.models:resnet18(10)", "literal values"),
                       ("torchvision.models:resnet18(num_klasses=10)", "unexpected keyword argument 'num_klasses'"),
                       ("torchvision.models:nonexistent_net", "cannot find the model factory")]:
        with pytest.raises(ValueError, match=re.escape(match)):
            gym.make("N2N-Custom-v0", teacher_module=bad, dataset=npz32)


def test_digits_sequential_cnn_and_other_stages(tmp_path) -> None:
    """The embedded 8x8 digits with a 1-channel Sequential CNN; removal and shrink stages."""
    torch.manual_seed(0)
    model = plain_cnn(in_channels=1)
    for stage in ("remove", "shrink"):
        env = gym.make("N2N-Custom-v0", teacher_module=model, dataset="digits", protocol="tiny", stage=stage,
                       allow_untrained_teacher=True,
                       device="cpu", cache=False, constraints={"max_params": 10_000})
        info = _episode(env)
        assert info["stage"] == stage and info["num_layers"] == 7
        if stage == "remove":  # the lowest action keeps every layer: the teacher itself, not smaller
            assert not info["valid"] and "not smaller than the teacher" in info["reason"] and info["reward"] == -1
        else:  # the smallest widths: valid, and within the constraint
            assert info["valid"] and info["params"] <= 10_000 and info["violated_constraints"] == ""


# ---------------------------------------------------------------------------- the CLI
def _cli_env() -> dict:
    return subprocess_env(MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                                    os.environ.get("PYTHONPATH")])))


def test_compress_model_command(npz32: str, tmp_path: pathlib.Path) -> None:
    """A user's factory module in the current folder + a checkpoint -> report, student, exports
    that load in a process where n2n_gym cannot be imported."""
    (tmp_path / "kuangliu_resnet.py").write_text(KUANGLIU)
    ns = _kuangliu_namespace()
    torch.manual_seed(5)
    weights = _randomize_bn(ns["cifar_resnet"](), seed=5)
    torch.save({"state_dict": weights.state_dict()}, tmp_path / "weights.pt")
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "n2n_gym.cli", "compress", "--model", "kuangliu_resnet:cifar_resnet",
                          "--checkpoint", "weights.pt", "--dataset", npz32, "--protocol", "tiny", "--updates", "1",
                          "--rollouts", "2", "--final-epochs", "1", "--no-progress", "--out", str(run),
                          "--env-kwargs", '{"allow_untrained_teacher": true}'],
                         cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported kuangliu_resnet:cifar_resnet" in out.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["env_id"] == "N2N-Custom-v0"
    imported = import_module(weights.eval(), torch.randn(2, 3, 32, 32))
    config = json.loads((run / "config.json").read_text())
    assert config["env_kwargs"]["teacher_module"] == "kuangliu_resnet:cifar_resnet"
    student_json = json.loads((run / "student.json").read_text())
    assert student_json["teacher"]["sha256"] == imported.sha256
    assert student_json["teacher"]["name"] == "kuangliu_resnet:cifar_resnet"
    assert student_json["teacher"]["path"] == str(tmp_path / "weights.pt")
    assert report["final"]["params"] < report["teacher"]["params"] == imported.architecture.params
    # the exports load without n2n_gym (an import of it fails in the child)
    check = textwrap.dedent(f"""
        import sys, numpy as np, torch
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'n2n_gym':
                    raise ImportError('n2n_gym is not installed here')
        sys.meta_path.insert(0, Block())
        x = torch.randn(4, 3, 32, 32)
        a = torch.export.load({str(run / 'student.pt2')!r}).module()(x)
        from onnx.reference import ReferenceEvaluator
        b = ReferenceEvaluator({str(run / 'student.onnx')!r}).run(None, {{'images': x.numpy()}})[0]
        assert np.allclose(a.detach().numpy(), b, atol=1e-4), abs(a.detach().numpy() - b).max()
        assert 'n2n_gym' not in sys.modules
        print('ok', tuple(a.shape))
    """)
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "ok (4, 10)" in done.stdout, done.stderr[-3000:]


def test_compress_refuses_unsupported_model(tmp_path: pathlib.Path, monkeypatch) -> None:
    """In process (the CLI's main), from the current folder as a user runs it."""
    from n2n_gym.cli import main

    (tmp_path / "concat_models.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        class Concat(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1), nn.Linear(8, 10)
            def forward(self, x):
                return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as err:
        main(["compress", "--model", "concat_models:Concat", "--dataset", "digits", "--out", str(tmp_path / "run")])
    assert re.match(r"n2n-gym compress: Cannot import Concat: 1 operation\(s\) fall outside .*:\n  - function cat\(\)",
                    str(err.value.code)), err.value.code
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="cannot find the model factory 'missing_models:net'"):
        main(["compress", "--model", "missing_models:net"])
    with pytest.raises(SystemExit, match="--checkpoint goes with --model"):
        main(["compress", "--checkpoint", "w.pt"])


# --------------------------------------------------------------------- the docs example
def test_docs_compress_your_own_model_example_runs(capsys) -> None:
    page = (REPO / "docs" / "own-model.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    exec(compile(code, "docs/own-model.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"teacher val acc 0\.\d+, student 0\.\d+, [\d.]+x smaller, reward -?[\d.]+", out), out


def test_an_untrained_imported_teacher_is_refused_at_reset(npz32: str) -> None:
    """A random-weight model is no better than chance: refused (its Ra would exceed 1), unless
    the caller opts in for plumbing runs."""
    from n2n_gym.teachers.teacher import TeacherInvalidError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10))
    with torch.no_grad():  # a constant prediction: exactly chance level
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.arange(10.0))
    env = gym.make("N2N-Custom-v0", teacher_module=model, dataset=npz32, protocol="tiny", cache=False)
    with pytest.raises(TeacherInvalidError, match="no better than chance.*allow_untrained_teacher=True"):
        env.reset(seed=0)
    env = gym.make("N2N-Custom-v0", teacher_module=model, dataset=npz32, protocol="tiny", cache=False,
                   allow_untrained_teacher=True)
    env.reset(seed=0)
    assert env.unwrapped.teacher.val_accuracy <= 0.2


def test_a_model_for_other_inputs_is_refused_with_the_root_cause_only(capfd) -> None:
    with pytest.raises(ValueError, match="expected input.*to have 3 channels, but got 1"):
        gym.make("N2N-Custom-v0", teacher_module=torchvision.models.resnet18(num_classes=10), dataset="digits")
    assert "Traceback" not in capfd.readouterr().err  # torch.fx's code dump is not printed


# ---------------------------------------------------------------------------- imported graphs
class _ConvTwice(nn.Module):
    """One conv applied twice (weight sharing): 1 set of weights, not 2 layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.conv(x))
        return self.fc(torch.flatten(x, 1))


class _TiedWeights(_ConvTwice):
    """Two conv modules holding one weight tensor."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2.weight = self.conv.weight

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("model, words", [(_ConvTwice, "module `conv` (Conv2d) is called 2 times"),
                                          (_TiedWeights, "`conv2.weight` is the same tensor as a weight of `conv`")])
def test_the_importer_refuses_shared_weights(model, words):
    from n2n_gym.teachers.importer import UnsupportedModelError, import_module

    with pytest.raises(UnsupportedModelError, match="weight sharing") as err:
        import_module(model().eval(), torch.randn(2, 1, 8, 8))
    assert words in str(err.value)
