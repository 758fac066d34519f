"""Student evaluation protocols: how a student is trained from its teacher and scored.

- ``paper``: the N2N code's settings: random init, MSE on logits, Adam lr 5e-4, weight
  decay 5e-4, batch 200, 5 epochs over the training split with random crop (+ flip where
  the data allows); validation and test accuracy on the whole splits.
- ``fast`` (default): the student inherits the teacher's weights, then a short
  distillation (MSE on logits) on a fixed subset of the training split whose teacher
  logits are computed once and reused by every student; scored on fixed subsets.
- ``tiny``: a few optimizer steps; seconds on CPU, for tests and CI.
- ``digits-v1``: the default of ``N2N-DigitsNet-Digits-v1``, chosen by the fidelity ladder
  (``benchmarks/fidelity.py``; its results in ``benchmarks/results/fidelity/``): the
  cheapest rung whose rewards rank 40 students at Spearman rho >= 0.8 against the
  reference (compress's final distillation, 30 epochs): inherited weights, the whole
  training split 3 times (~4k student images), Adam lr 1e-3 with the last epoch at lr/10,
  batch-norm recalibration on the training split, scored on the whole validation split.
- ``digits-v2`` and ``resnet20-v1``: the defaults of ``N2N-DigitsNet-Digits-v2`` and
  ``N2N-ResNet20-CIFAR10-v1``, picked by the same rule of the fidelity study (``choose``: the
  cheapest protocol, as measured or calibrated, whose rewards rank >= 40 students at Spearman
  rho >= 0.8 against the reference, carrying information about accuracy and finding the
  reference's best 5 no worse than size alone). Digits: ``fast`` calibrated (rho 0.90 against
  30 epochs, 0.7 s per student). ResNet-20 CIFAR-10: ``fast`` with batch-norm recalibration
  on 2,048 training images, calibrated (rho 0.83 [0.66, 0.93] against 5 epochs over the
  whole training split, 6.8 s per student on one CPU thread). Their calibrations are the
  study's full fits (``ladder.json``, ``calibrated.<rung>.fit``), so the reward's accuracy
  is an estimate of what the reference training would reach.

Optional fields (defaults: off) describe the rungs of the fidelity ladder
(``benchmarks/fidelity.py``) and the final distillation of ``n2n-gym compress``:

- ``loss``: ``"mse"`` on logits (N2N) or ``"kd"``: Hinton et al. (2015)'s
  ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`` with
  ``T = 4``, ``alpha = 0.9`` (:data:`n2n_gym.evaluation.distill.KD_TEMPERATURE`, ``KD_ALPHA``).
- ``lr_drop``: the last third of the epochs at lr / 10 (the step schedule of compress).
- ``optimizer``: ``"adam"`` (N2N's code) or ``"sgd"``: SGD with Nesterov momentum 0.9, the
  usual CIFAR ResNet recipe (He et al. 2016), e.g. compress's ``kd-sgd`` final recipe.
- ``cosine``: the lr of epoch ``e`` of ``E`` is ``lr * (1 + cos(pi * e / E)) / 2`` (SGDR,
  Loshchilov & Hutter ICLR 2017, without restarts); excludes ``lr_drop``.
- ``precision``: the training forward passes of teacher and student: ``"auto"`` (bf16
  autocast on CUDA, fp32 on the CPU) or ``"bf16"`` (bf16 autocast on the CPU too, worth it
  where the CPU computes bf16 natively: ``benchmarks/final_precision.py``); weights and
  optimizer state stay fp32. Used by compress's ``--final-precision``.
- ``bn_recalibration``: after training, batch-norm statistics are recomputed on this many
  training images (EagleEye, Li et al. ECCV 2020); with ``epochs=0`` the student is scored
  on its inherited weights after recalibration alone.
- ``supernet`` (with ``init="supernet"``): the sha256 of the weights of a weight-sharing
  supernet of the teacher (:mod:`n2n_gym.evaluation.supernet`; Once-for-All, Cai et al. ICLR
  2020; BigNAS, Yu et al. ECCV 2020) from which the student takes its weights instead of the
  teacher's, exactly as it would from the teacher; the distillation target stays the teacher.
  With ``epochs=0`` and ``bn_recalibration`` a student is scored in seconds without training.
  The file is found by content (:func:`n2n_gym.evaluation.supernet.find_supernet`).
- ``calibration``: ``[intercept, slope, x_min, chance]`` of a
  :class:`~n2n_gym.evaluation.calibration.Calibration` fitted by the fidelity study: the
  student's measured accuracies (validation and test) are mapped to estimates of what the
  reference training would reach, and the reward is computed from the estimate; the measured
  validation accuracy is kept beside it (``EvalResult.measured_accuracy``).
- ``calibrated_for``: the sha256 of the teacher's weights the calibration was fitted on; an
  evaluator of another teacher refuses the protocol (``ValueError`` at ``reset()``), as the
  map says nothing about another teacher's students.

A field left at its default is left out of :meth:`Protocol.to_dict`, so the cache keys and
records of the protocols that existed before these fields stay the same.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from n2n_gym.evaluation.calibration import Calibration
from n2n_gym.teachers.training import PRECISIONS
from n2n_gym.utils.checks import check_bool, check_choice, check_float, check_int


@dataclass(frozen=True)
class Protocol:
    name: str
    init: str  # "inherit" (teacher weights) | "random" | "supernet" (the weights of the supernet below)
    epochs: int  # passes over the (sub)set of training images
    train_images: int | None  # None: the whole training split
    val_images: int | None  # None: the whole validation split
    test_images: int | None  # None: the whole test set
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool  # random crop (+ flip); teacher logits are then recomputed per batch
    loss: str = "mse"  # "mse" (N2N: MSE on logits) | "kd" (Hinton et al. 2015: KL at T=4 + labels)
    lr_drop: bool = False  # the last third of the epochs at lr / 10
    bn_recalibration: int = 0  # training images over which batch-norm statistics are recomputed after training
    supernet: str | None = None  # init="supernet": sha256 of the supernet's weights (teachers.weights_sha256)
    calibration: tuple[float, float, float, float] | None = None  # Calibration.to_list(): accuracy -> trained accuracy
    calibrated_for: str | None = None  # sha256 of the teacher's weights the calibration was fitted on
    optimizer: str = "adam"  # "adam" | "sgd" (Nesterov momentum 0.9)
    cosine: bool = False  # a cosine lr per epoch, from lr towards 0
    precision: str = "auto"  # training forward passes: "auto" (bf16 on CUDA, fp32 on CPU) | "bf16" (also on CPU)

    def __post_init__(self) -> None:
        # checked here so that a bad protocol fails where it is written, not after a student trained
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Protocol name must be a non-empty str, got {self.name!r}")
        check_choice("Protocol init", self.init, INITS)
        if (self.init == "supernet") != (self.supernet is not None):
            raise ValueError("Protocol init='supernet' and supernet=<sha256 of the supernet's weights> go together: "
                             f"got init={self.init!r}, supernet={self.supernet!r}")
        if self.supernet is not None and not (isinstance(self.supernet, str) and _SHA256.fullmatch(self.supernet)):
            raise ValueError(f"Protocol supernet must be a sha256 (64 lowercase hex digits), got {self.supernet!r}")
        check_int("Protocol epochs", self.epochs, min=0)
        check_choice("Protocol loss", self.loss, LOSSES)
        check_bool("Protocol lr_drop", self.lr_drop)
        check_choice("Protocol optimizer", self.optimizer, OPTIMIZERS)
        check_bool("Protocol cosine", self.cosine)
        check_choice("Protocol precision", self.precision, PRECISIONS)
        if self.cosine and self.lr_drop:
            raise ValueError("Protocol cosine and lr_drop are two lr schedules: set one of them")
        check_int("Protocol bn_recalibration", self.bn_recalibration, min=0)
        if self.epochs == 0 and self.init == "random":
            raise ValueError("Protocol epochs=0 scores the student untrained: it needs init='inherit' "
                             "(the teacher's weights) or 'supernet', usually with bn_recalibration > 0")
        for field in ("train_images", "val_images", "test_images"):
            if getattr(self, field) is not None:
                check_int(f"Protocol {field}", getattr(self, field), min=1)
        if self.calibration is not None:
            if not isinstance(self.calibration, (list, tuple)):  # a set or a dict has no order to read it by
                raise TypeError(f"Protocol calibration must be a list [intercept, slope, x_min, chance], got "
                                f"{type(self.calibration).__name__} {self.calibration!r}")
            # a record's list becomes the tuple a frozen (hashable) protocol holds; the values are checked there
            object.__setattr__(self, "calibration", tuple(Calibration.from_list(self.calibration).to_list()))
        if self.calibrated_for is not None:
            if self.calibration is None:
                raise ValueError("Protocol calibrated_for names the teacher a calibration was fitted on; "
                                 "it needs a calibration")
            if not (isinstance(self.calibrated_for, str) and _SHA256.fullmatch(self.calibrated_for)):
                raise ValueError(f"Protocol calibrated_for must be a teacher's sha256 (64 lowercase hex digits, "
                                 f"n2n_gym.teachers.weights_sha256), got {self.calibrated_for!r}")
        check_int("Protocol batch_size", self.batch_size, min=1)
        check_float("Protocol lr", self.lr, min=0.0, min_open=True)
        check_float("Protocol weight_decay", self.weight_decay, min=0.0)
        check_bool("Protocol augment", self.augment)

    def to_dict(self) -> dict:
        """The fields as a dict; the optional fields only where they differ from their default."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in OPTIONAL_FIELDS and out[f.name] == f.default:
                del out[f.name]
        if "calibration" in out:
            out["calibration"] = list(out["calibration"])  # JSON's form, as records store it
        return out

    def estimate(self, accuracy: float) -> float:
        """The accuracy the protocol reports for a measured ``accuracy``: the calibrated
        estimate of the trained accuracy, or ``accuracy`` itself without a calibration."""
        return accuracy if self.calibration is None else Calibration.from_list(self.calibration).predict(accuracy)

    @classmethod
    def from_dict(cls, data: dict) -> "Protocol":
        """The protocol of :meth:`to_dict` (a record's or a cache row's); unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError(f"a protocol must be given as a dict of its fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown Protocol fields {unknown}; the fields are {sorted(names)}")
        return cls(**data)


LOSSES = ("mse", "kd")
OPTIMIZERS = ("adam", "sgd")
INITS = ("inherit", "random", "supernet")
OPTIONAL_FIELDS = ("loss", "lr_drop", "optimizer", "cosine", "precision", "bn_recalibration", "supernet", "calibration", "calibrated_for")
_SHA256 = re.compile(r"[0-9a-f]{64}")


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", "random", 5, None, None, None, 200, 5e-4, 5e-4, True),
    "fast": Protocol("fast", "inherit", 2, 1024, 1000, 1000, 64, 5e-4, 0.0, False),
    "tiny": Protocol("tiny", "inherit", 1, 128, 256, 256, 64, 5e-4, 0.0, False),
    # the fidelity ladder's rung "mse-4k" on the digits split (1,293 training images), field for
    # field as measured (benchmarks/fidelity.py): reward rho 0.83 [0.61, 0.96] against 30 epochs
    "digits-v1": Protocol("digits-v1", "inherit", 3, None, 2000, 2000, 64, 1e-3, 0.0, False, lr_drop=True,
                          bn_recalibration=1293),
}
# the fidelity study's picks (benchmarks/results/fidelity/<env>/ladder.json: "choice" and the
# chosen rung's calibration "fit", fitted on all its students); tests check both against the file
PROTOCOLS["digits-v2"] = dataclasses.replace(
    PROTOCOLS["fast"], name="digits-v2",
    calibration=(0.9502829149677284, 0.03774516416679979, 0.5625, 0.1),  # 40 students, 30-epoch reference
    calibrated_for="b763a7ec6d50f0d2d4dc736f083863e4aa35c3fa9e53cb52efb25c1db0be0d0e")
PROTOCOLS["resnet20-v1"] = dataclasses.replace(
    PROTOCOLS["fast"], name="resnet20-v1", bn_recalibration=2048,
    calibration=(0.7004420489672976, 0.2301306859859017, 0.15299999713897705, 0.1),  # 41 students, 5 epochs
    calibrated_for="4c11bb77cd6182018dcdb5e2bc7603b52211c5566e052c862b89c068148808b5")


def get_protocol(protocol: "str | Protocol") -> Protocol:
    """The protocol of a registered name, or ``protocol`` itself. Records, info dicts and
    leaderboards name a protocol by its name, so a Protocol that reuses a registered name with
    other fields (a calibration, another lr) is refused (``ValueError``): give it its own name."""
    if isinstance(protocol, Protocol):
        known = PROTOCOLS.get(protocol.name)
        if known is not None and known != protocol:
            changed = sorted(k for k, v in protocol.to_dict().items() if known.to_dict().get(k) != v)
            changed += sorted(set(known.to_dict()) - set(protocol.to_dict()))
            raise ValueError(f"this Protocol is named {protocol.name!r} but differs from the registered protocol of "
                             f"that name in {changed}: records would confuse the two; give it its own name, e.g. "
                             f"dataclasses.replace(protocol, name={protocol.name + '-custom'!r})")
        return protocol
    if not isinstance(protocol, str):
        raise TypeError(f"protocol must be one of {sorted(PROTOCOLS)} or a Protocol, got {type(protocol).__name__}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)} or pass a Protocol")
    return PROTOCOLS[protocol]
