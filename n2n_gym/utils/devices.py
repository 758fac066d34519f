"""The one rule for ``device="auto"``: CUDA when PyTorch sees a GPU, else the CPU."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device: str | None) -> str:
    """``"cuda"`` or ``"cpu"`` for ``None`` / ``"auto"``; any other device name unchanged
    (``"cpu"``, ``"cuda:1"``, ...). Imports torch only when it must look."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
