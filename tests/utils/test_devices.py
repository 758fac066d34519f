"""n2n_gym.utils.devices: ``"auto"`` and None resolve to CUDA when PyTorch sees a GPU, else the
CPU; any other device name comes back unchanged, without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import subprocess_env

from n2n_gym.utils.devices import resolve_device


@pytest.mark.parametrize("device", [None, "auto"])
def test_auto_is_cuda_only_when_torch_sees_a_gpu(device):
    assert resolve_device(device) == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: auto is cuda there")
@pytest.mark.parametrize("device", [None, "auto"])
def test_auto_is_the_cpu_on_a_machine_without_a_gpu(device):
    assert resolve_device(device) == "cpu"


@pytest.mark.parametrize("visible, expected", [(True, "cuda"), (False, "cpu")])
def test_auto_follows_what_torch_reports(monkeypatch, visible, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    assert resolve_device("auto") == expected and resolve_device(None) == expected


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps", "meta"])
def test_other_names_come_back_unchanged(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # never looked at for an explicit name
    assert resolve_device(device) == device


def test_a_torch_device_comes_back_as_its_name():
    out = resolve_device(torch.device("cuda", 1))
    assert out == "cuda:1" and type(out) is str


def test_torch_is_imported_only_to_resolve_auto():
    code = ("import sys\n"
            "from n2n_gym.utils.devices import resolve_device\n"
            "assert resolve_device('cuda:1') == 'cuda:1' and 'torch' not in sys.modules, 'torch imported'\n"
            "resolve_device('auto')\n"
            "assert 'torch' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
