"""Student evaluation protocols: how a student is trained from its teacher and scored.

- ``paper``: the N2N code's settings: random init, MSE on logits, Adam lr 5e-4, weight
  decay 5e-4, batch 200, 5 epochs over the training split with random crop (+ flip where
  the data allows); validation and test accuracy on the whole splits.
- ``fast`` (default): the student inherits the teacher's weights, then a short
  distillation (MSE on logits) on a fixed subset of the training split whose teacher
  logits are computed once and reused by every student; scored on fixed subsets.
- ``tiny``: a few optimizer steps; seconds on CPU, for tests and CI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .checks import check_bool, check_choice, check_float, check_int


@dataclass(frozen=True)
class Protocol:
    name: str
    init: str  # "inherit" (teacher weights) | "random"
    epochs: int  # passes over the (sub)set of training images
    train_images: int | None  # None: the whole training split
    val_images: int | None  # None: the whole validation split
    test_images: int | None  # None: the whole test set
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool  # random crop (+ flip); teacher logits are then recomputed per batch

    def __post_init__(self) -> None:
        # checked here so that a bad protocol fails where it is written, not after a student trained
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Protocol name must be a non-empty str, got {self.name!r}")
        check_choice("Protocol init", self.init, ("inherit", "random"))
        check_int("Protocol epochs", self.epochs, min=1)
        for field in ("train_images", "val_images", "test_images"):
            if getattr(self, field) is not None:
                check_int(f"Protocol {field}", getattr(self, field), min=1)
        check_int("Protocol batch_size", self.batch_size, min=1)
        check_float("Protocol lr", self.lr, min=0.0, min_open=True)
        check_float("Protocol weight_decay", self.weight_decay, min=0.0)
        check_bool("Protocol augment", self.augment)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", "random", 5, None, None, None, 200, 5e-4, 5e-4, True),
    "fast": Protocol("fast", "inherit", 2, 1024, 1000, 1000, 64, 5e-4, 0.0, False),
    "tiny": Protocol("tiny", "inherit", 1, 128, 256, 256, 64, 5e-4, 0.0, False),
}


def get_protocol(protocol: "str | Protocol") -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    if not isinstance(protocol, str):
        raise TypeError(f"protocol must be one of {sorted(PROTOCOLS)} or a Protocol, got {type(protocol).__name__}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)} or pass a Protocol")
    return PROTOCOLS[protocol]
