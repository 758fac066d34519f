"""The N2N compression MDP as a Gymnasium environment."""

from __future__ import annotations

import difflib
import inspect
import os
import time
import warnings
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from n2n_gym.data.datasets import dataset_info, load_dataset
from n2n_gym.envs.checks import check_env_args, check_reset_options
from n2n_gym.evaluation.backends import BACKENDS, make_backend
from n2n_gym.evaluation.cache import NullCache, ResultCache
from n2n_gym.evaluation.evaluator import Evaluator
from n2n_gym.evaluation.protocols import Protocol, get_protocol
from n2n_gym.evaluation.reward import PENALTIES, n2n_reward, parse_constraints
from n2n_gym.ir.arch import Architecture, ArchitectureError
from n2n_gym.ir.edits import (
    MIN_WIDTH,
    InvalidStudent,
    apply_decisions,
    check_start_architecture,
    layer_rules,
)
from n2n_gym.ir.encoding import (
    COLUMN,
    OBSERVATIONS,
    STAGES,
    encode_observation,
    observation_space,
    static_features,
    width_scale,
)
from n2n_gym.ir.zoo import teacher_architecture
from n2n_gym.teachers.importer import import_teacher
from n2n_gym.teachers.teacher import (
    Recipe,
    load_teacher,
    max_train_seconds,
    teacher_from_import,
)
from n2n_gym.utils.devices import resolve_device

RATIO_TABLES: dict[str, tuple[float, ...]] = {
    # the N2N code's shrink table (0.5 repeated: a prior towards halving)
    "paper": (0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    "uniform": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
}
DEFAULT_RATIOS = {"shrink": "paper", "joint": "uniform"}
KEEP, REMOVE = 0, 1  # the actions of stage "remove"
CUSTOM_TEACHER = "custom"  # the teacher name of N2N-Custom-v0: the network is teacher_module


class N2NEnv(gym.Env):
    """
    ## Description
    Compress a trained *teacher* network, one layer at a time (Ashok et al., "N2N Learning:
    Network to Network Compression via Policy Gradient Reinforcement Learning", ICLR 2018).
    An episode walks once over the layers of the starting architecture (the teacher, or a
    student given as ``start_architecture``) and decides for each whether to keep, remove
    or shrink it. The final architecture is the *student*: it is built, distilled from the
    teacher under the evaluation ``protocol`` and scored; the episode's only reward is
    N2N's ``R = Rc * Ra``. Results are cached, so an architecture seen before costs nothing.

    ## Action Space
    ``Discrete``, depending on ``stage``:
    - ``"remove"``: ``Discrete(2)``; 0 keeps the current layer, 1 removes it.
    - ``"shrink"``: ``Discrete(K)``; action ``k`` keeps the layer with width ratio
      ``ratios[k]``: new width ``max(floor(n * r), 10)`` (N2N's floor), never more than n.
    - ``"joint"`` (default): ``Discrete(K + 1)``; ``k < K`` keeps with ratio ``ratios[k]``,
      ``K`` removes the layer.
    Not every action is allowed for every layer: the first and last layer, convs with
    stride != 1, linear and pooling layers and residual shortcuts are never removed; only
    free widths shrink (a residual addition ties the widths of a stage to its first
    producer). The allowed actions of the current layer are ``info["action_mask"]`` and
    ``env.action_masks()``, both ``bool`` (what masked distributions take: TorchRL's
    ``MaskedCategorical``, torch's ``masked_fill``; Gymnasium's ``action_space.sample(mask)``
    wants int8: ``mask.astype(np.int8)``); ``info["layer_masks"]`` holds every layer's.
    ``gym.make`` adds ``n2n_gym.envs.adapters.ActionMasks`` as the outermost wrapper, so
    ``env.action_masks()`` works on what it returns on every supported gymnasium
    (sb3-contrib's ``ActionMasker(env, lambda env: env.action_masks())``). A
    disallowed action is replaced by "keep at full width" (``illegal_action="noop"``) or
    makes the student invalid (``illegal_action="invalid"``). An action outside the space
    raises ``ValueError``.

    ## Observation Space
    The per-layer table: one row per layer of the starting architecture (the teacher's
    layer count is ``max_layers``; further rows are zero), with the columns of
    ``n2n_gym.ir.encoding.FEATURES`` (F = 24): the paper's encoding (type, kernel, stride,
    padding, outputs, skip start, skip end), the input width, shortcut / removable /
    shrinkable flags, the decisions so far (decided, removed, ratio), the current layer,
    the position and the stage. ``observation`` chooses how it is given, so that every
    kind of client takes it without glue (``n2n_gym.ir.encoding.OBSERVATIONS``):
    - ``"table"`` (default): ``Box(0, 1, (max_layers, F), float32)``, for per-layer
      (recurrent, attention) policies such as N2N's LSTMs.
    - ``"flat"``: ``Box(0, 1, (max_layers * F,), float32)``, the table row-major, for
      flat-MLP policies (SB3 ``MlpPolicy``, CleanRL-style scripts).
    - ``"dict"``: ``Dict({"observation": <the flat Box>, "action_mask": Box(0, 1, (n,),
      bool)})``, the action mask of the current layer inside the observation: the
      convention of mask-aware libraries (TorchRL's ``ActionMask`` transform, PettingZoo).
      ``n2n_gym.envs.adapters.DictKeys`` renames the keys for Tianshou (``obs``, ``mask``) and
      RLlib's action-masking module (``observations``).
    In a process started with ``spawn`` (``AsyncVectorEnv(..., context="spawn")``), make
    ``"n2n_gym:<id>"`` so that the worker imports the package that registers the ids.

    ## Rewards
    0 on every intermediate step. On the last step ``R = Rc * Ra`` with
    ``C = 1 - params_student / params_teacher``, ``Rc = C (2 - C)``,
    ``Ra = val_acc_student / val_acc_teacher``, always relative to the original teacher;
    -1 for an invalid student (cannot be built, not smaller than the teacher, or its
    distillation diverged: non-finite loss, weights or logits), with ``info["reason"]``;
    nothing that goes wrong with a student raises from ``step()`` (CompilerGym's contract).
    Violated ``constraints`` are penalised (``penalty``: N2N's annealed penalty, -1, or minus
    the relative shortfall, Deb's feasibility rule: ``n2n_gym.evaluation.reward``).

    ## Starting State
    The starting architecture with no decision made, the first layer current.
    Deterministic: reset's seed only seeds ``np_random`` for the caller's use.

    ## Episode End
    Terminates after one step per layer of the starting architecture. No truncation.
    The terminal ``info`` has ``accuracy`` (validation, used by the reward; under a calibrated
    protocol the estimate of the trained accuracy, and ``measured_accuracy`` what the protocol
    measured, else the two are equal),
    ``teacher_accuracy``, ``test_accuracy`` (reported only; NaN with ``test_accuracy="lazy"``,
    measured on demand by ``env.unwrapped.student_test_accuracy(actions)``), ``params``,
    ``teacher_params``, ``flops`` (2 per MAC, FlopCounterMode's convention), ``compression``
    (teacher params / student params), ``valid``, ``reason``, ``architecture`` (IR JSON),
    ``actions``, ``eval_seconds``, ``cached``, ``protocol``, ``data_variant``,
    ``violated_constraints`` (names joined by "; ", "" if none), ``illegal_layers`` (per
    layer: was its action disallowed), the teacher's and data's identity.
    Every step's ``info`` (reset's too) has the same keys, each of one type and shape at
    every step (what replay buffers that store ``info`` need: Tianshou, TorchRL), as plain
    Python values (``json.dumps`` writes them; TorchRL's ``default_info_dict_reader`` wants numpy
    values: wrap the env in ``n2n_gym.envs.adapters.NumpyInfo``): neutral
    values before the last step (0, False, "", teacher and data fields already filled),
    ``actions`` padded with -1 for the layers not decided yet, strings never None (an
    invalid student's ``architecture`` is ""). NaN appears only in ``test_accuracy`` with
    ``test_accuracy="lazy"`` (Tianshou's buffer check refuses NaN: keep "eager" there).

    ## Arguments
    - ``teacher``: zoo name (``n2n_gym.ir.zoo.TEACHERS``); ``dataset``: "digits", "mnist",
      "cifar10", "cifar100", "svhn" or "npz:/path/file.npz".
    - ``teacher_module``: your own trained network instead of a zoo teacher (``N2N-Custom-v0``):
      an ``nn.Module`` or a ``"package.module:factory"`` string (the factory is called with
      torch seeded to 0; ``teacher_checkpoint`` then names a ``state_dict`` to load into it).
      It is imported into the IR by ``n2n_gym.teachers.importer.import_module`` (torch.fx) on an
      input of the data set's shape and must give the data set's number of classes; its
      accuracies are measured on the env's splits; results are cached under the digest of
      its architecture and weights.
    - ``stage``: "remove" | "shrink" | "joint". ``ratios``: "paper" | "uniform" | a tuple
      with 1.0 in it (default: "paper" for shrink, "uniform" for joint).
    - ``protocol``: a name of ``n2n_gym.evaluation.protocols.PROTOCOLS`` ("fast", "paper", "tiny",
      "digits-v1", ...) or a ``Protocol``; the default is the id's own (``"fast"`` for the v0 ids,
      the fidelity study's pick for the newer ones: ``"digits-v1"``, ``"digits-v2"``,
      ``"resnet20-v1"``; Version History). ``eval_seed``.
    - ``start_architecture``: an ``Architecture``, its JSON, or a path to the JSON.
    - ``teacher_checkpoint``: a checkpoint to load instead of the pinned or trained teacher;
      ``teacher_recipe``: a ``Recipe`` (or dict of its fields) for training it;
      ``teacher_max_minutes``: the longest teacher training allowed without asking
      (default ``$N2N_TEACHER_MAX_MINUTES`` or 30; ``float("inf")`` opts in to any wait).
      The teacher is provisioned at the first ``reset()`` (``n2n_gym.teachers.load_teacher``:
      checkpoint, pinned file, cache, else trained), which raises
      ``TeacherTrainingTooLong`` within seconds, with the estimate and the ways out, if
      training it here would take longer, and the data set's error if its data are missing.
    - ``constraints``: ``{"max_params": n, "max_flops": n, "min_accuracy": a}`` or
      ``Constraint`` rows; ``penalty``: "anneal" | "hard" | "violation" (minus the relative
      shortfall v as v / (1 + v), in (-1, 0): searches that start among infeasible students, such as evolution
      or TPE under a high ``min_accuracy``, are led towards feasible ones); ``penalty_horizon`` (updates);
      ``episodes_per_update``: how episodes map to N2N's update index: episode ``k``
      after the last ``reset(seed=...)`` (counting from 0) has update ``k //
      episodes_per_update``, so the same seed and actions give the same rewards whatever
      the env object played before; ``reset(options={"update": u})`` sets it explicitly
      (what a batched agent such as N2N's does). The terminal info's ``update`` says which
      was used. A loop that seeds every reset stays at update 0, where "anneal" does not
      penalise: the env warns (UserWarning) when it sees that under "anneal" with constraints.
    - ``illegal_action``: "noop" | "invalid". ``min_width``: floor on shrunk widths (int >= 1).
    - ``reset(options=...)``: only ``{"update": u}`` (int >= 0); another key is a ``ValueError``.

    Every argument is checked at construction (``gym.make``): a wrong type raises
    ``TypeError``, a value out of range (``min_width=0``, ``min_accuracy=95`` instead of
    0.95, a ``start_architecture`` that does not descend from the teacher layer by layer,
    a one-class data set, ...) ``ValueError``, each naming the argument and the fix.
    - ``data_root`` (default ``$N2N_DATA``), ``device`` ("auto", "cpu", "cuda"),
      ``cache`` (True: the shared SQLite cache, a path, or False), ``render_mode``
      ("ansi"; another mode, such as the "rgb_array" of SB3's ``make_vec_env`` or RL Zoo's
      "human", is warned about as Gymnasium does and ``render()`` returns None),
      ``progress`` (show teacher training progress).
    - ``backend``: where students train: "inline" (this process, default) | "process" (a
      local pool of ``workers`` processes) | "ray" (``workers`` Ray actors;
      ``backend_options``: ``address``, ``num_cpus``, ``num_gpus``, ``threads``; see
      ``n2n_gym.evaluation.backends``). Every backend shares the result cache and claims a student
      in flight, so no two workers (nor two envs of ``gym.make_vec(...,
      vectorization_mode="async")``) train the same one. ``env.unwrapped.evaluate_many(
      actions_list)`` scores a batch of episodes concurrently; rewards equal the serial
      ones.
    - ``test_accuracy``: "eager" (default: measured for every student) | "lazy" (skipped:
      ``info["test_accuracy"]`` is NaN; ``student_test_accuracy(actions)`` measures it for
      the students that are reported). Rewards are the same either way.
    - ``observation``: "table" | "flat" | "dict" (see Observation Space).
    - ``allow_untrained_teacher``: accept a ``teacher_module`` that is no better than chance
      on the validation split (default: refused with ``TeacherInvalidError`` at the first
      ``reset()``, since Ra would exceed 1); for plumbing and timing runs only.
    An unknown argument raises ``TypeError`` in Python's own wording ("N2NEnv.__init__()
    got an unexpected keyword argument 'x'"), which wrappers that probe optional arguments
    (TorchRL's ``GymEnv`` passes ``frameskip``) recognise, followed by the closest valid name.
    The env pickles at any point of an episode; the evaluator (data, teacher, cache
    connection) is not pickled but rebuilt on first use.

    ## Version History
    - v0: initial release (evaluation protocols "paper", "fast", "tiny" of n2n-gym 0.1). Teachers
      are pinned by the sha256 of their weights (``n2n-gym teacher list``); the teacher is
      provisioned at the first ``reset()`` instead of the first terminal step.
      Rewards unchanged since; the interface changed without a version bump: masks are
      ``bool`` (were int8) in ``info``, the dict observation (``Box`` of bool) and
      ``action_masks()``; every step's ``info`` has the terminal keys (neutral before the end),
      ``violated_constraints`` is a string, ``illegal_actions`` (layer indices) became
      ``illegal_layers`` (a bool per layer), an invalid student's ``architecture`` is "" (was
      None); an unsupported ``render_mode`` warns instead of raising.
    - v1 (``N2N-DigitsNet-Digits-v1`` only): the default protocol is ``"digits-v1"``, the rung of
      the fidelity ladder that ranks students as full training does (``benchmarks/fidelity.py``):
      MSE logit distillation on all 1,293 training images for 3 epochs (lr 1e-3, dropped 10x
      for the last epoch), batch-norm statistics recalibrated on the training images, scored on
      the whole validation split (up to 2,000 images). Spearman rho of its reward against 30-epoch distillation: 0.83
      [0.61, 0.96] on 40 students (``fast``: 0.69 [0.43, 0.88]); 1.3 s per student on one
      loaded CPU thread. The other ids stay v0 until their ladder is measured.
    - v2 (``N2N-DigitsNet-Digits-v2``) and v1 (``N2N-ResNet20-CIFAR10-v1``): the default protocol
      is the one the fidelity study's final rule picks on each (``choose`` in
      ``benchmarks/fidelity.py``: the cheapest protocol, as measured or calibrated, whose rewards
      rank >= 40 students at Spearman rho >= 0.8 against the reference, with information about
      accuracy and top-5 recall no worse than size alone). Both are calibrated: the measured
      validation accuracy is mapped by the study's fitted line to an estimate of the accuracy
      the reference training reaches, and the reward is computed from the estimate
      (``info["measured_accuracy"]`` keeps the measurement; a student measured near the teacher
      can be estimated above the teacher's accuracy, so Ra can exceed 1, as in the study's
      figures). The calibration is the teacher's own (``Protocol.calibrated_for``): another
      teacher refuses it at ``reset()``. ``"digits-v2"``: ``fast``
      calibrated, rho 0.90 against 30 epochs on 40 students, 0.7 s per student.
      ``"resnet20-v1"``: ``fast`` with batch-norm recalibration on 2,048 training images,
      calibrated, rho 0.83 [0.66, 0.93] against 5 epochs over the whole training split on 41
      students (``fast`` as measured, the v0 default: 0.11 [-0.20, 0.40]); 6.8 s per student
      on one CPU thread.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        teacher: str = "digitsnet",
        dataset: str = "digits",
        *,
        stage: str = "joint",
        protocol: str | Protocol = "fast",
        ratios: str | Sequence[float] | None = None,
        start_architecture: Architecture | str | os.PathLike | None = None,
        teacher_checkpoint: str | os.PathLike | None = None,
        teacher_module: Any = None,
        teacher_recipe: Recipe | dict | None = None,
        teacher_max_minutes: float | None = None,
        constraints: Any = None,
        penalty: str = "anneal",
        penalty_horizon: int = 15,
        episodes_per_update: int = 5,
        illegal_action: str = "noop",
        min_width: int = MIN_WIDTH,
        eval_seed: int = 0,
        data_root: str | os.PathLike | None = None,
        device: str = "auto",
        cache: bool | str | os.PathLike = True,
        render_mode: str | None = None,
        progress: bool = True,
        backend: str = "inline",
        workers: int = 1,
        backend_options: dict | None = None,
        test_accuracy: str = "eager",
        observation: str = "table",
        allow_untrained_teacher: bool = False,
        **unknown: Any,
    ):
        if unknown:
            raise _unexpected_arguments(unknown)
        check_env_args(teacher=teacher, dataset=dataset, protocol=protocol, ratios=ratios,
                       start_architecture=start_architecture, teacher_checkpoint=teacher_checkpoint,
                       teacher_recipe=teacher_recipe, penalty_horizon=penalty_horizon,
                       episodes_per_update=episodes_per_update, min_width=min_width, eval_seed=eval_seed,
                       data_root=data_root, device=device, cache=cache, progress=progress)
        _check_choice("observation", observation, OBSERVATIONS)
        if not isinstance(allow_untrained_teacher, bool):
            raise TypeError(f"allow_untrained_teacher must be True or False, got {allow_untrained_teacher!r}")
        self.allow_untrained_teacher = allow_untrained_teacher
        _check_choice("stage", stage, STAGES)
        _check_choice("penalty", penalty, PENALTIES)
        _check_choice("illegal_action", illegal_action, ("noop", "invalid"))
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            # Gymnasium's way (gym.make only warns): SB3's make_vec_env passes "rgb_array", RL Zoo's
            # enjoy "human"; render() then returns None
            gym.logger.warn(f"render_mode={render_mode!r} is not supported by N2NEnv (modes: "
                            f"{self.metadata['render_modes']}); render() returns None. Use render_mode='ansi' "
                            "for a text table.")
            render_mode = None  # what Gymnasium's render checker accepts
        self.protocol = get_protocol(protocol)
        self.stage, self.render_mode, self.illegal_action = stage, render_mode, illegal_action
        self.teacher_name, self.dataset_name = teacher, dataset
        self.data_info = dataset_info(dataset)
        if self.data_info.num_classes < 2:
            raise ValueError(f"dataset {dataset!r} has {self.data_info.num_classes} class(es); a classifier needs "
                             "at least 2 (a one-class data set makes every reward meaningless)")
        self._imported = None
        if teacher_module is not None or teacher == CUSTOM_TEACHER:
            if teacher not in (CUSTOM_TEACHER, "digitsnet"):
                raise ValueError(f"pass either a zoo teacher ({teacher!r}) or teacher_module, not both")
            if teacher_module is None:
                raise ValueError("N2N-Custom-v0 needs teacher_module=<your nn.Module or 'package.module:factory'>, "
                                 "e.g. gym.make('N2N-Custom-v0', teacher_module=model, dataset='npz:/path/data.npz')")
            self._imported = import_teacher(teacher_module, self.data_info, teacher_checkpoint)
            self.teacher_name = self._imported.architecture.name
            self.teacher_architecture = self._imported.architecture
        else:
            self.teacher_architecture = teacher_architecture(teacher, self.data_info.input_shape,
                                                             self.data_info.num_classes)
        self.start_architecture = _parse_start(start_architecture, self.teacher_architecture)
        self.ratios = _parse_ratios(ratios if ratios is not None else DEFAULT_RATIOS.get(stage), stage)
        self.constraints = parse_constraints(constraints)
        self.penalty, self.penalty_horizon, self.episodes_per_update = penalty, penalty_horizon, episodes_per_update
        self.min_width, self.eval_seed, self.progress = min_width, eval_seed, progress
        self.teacher_checkpoint, self.data_root = teacher_checkpoint, data_root
        self.teacher_recipe = Recipe(**teacher_recipe) if isinstance(teacher_recipe, dict) else teacher_recipe
        if teacher_max_minutes is not None:
            max_train_seconds(teacher_max_minutes)  # ValueError for a bad value, here
        self.teacher_max_minutes = teacher_max_minutes
        self.device = resolve_device(device)
        self._cache_arg = cache
        self._evaluator = None
        _check_choice("backend", backend, BACKENDS)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise TypeError(f"workers must be an integer, got {workers!r}"
                            + (f": pass workers={workers.strip()} without quotes" if isinstance(workers, str) else ""))
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if backend_options is not None and not isinstance(backend_options, dict):
            raise TypeError(f"backend_options must be a dict, got {type(backend_options).__name__}")
        if backend == "inline" and (workers != 1 or backend_options):
            raise ValueError(f"backend 'inline' runs one worker and takes no options; got workers={workers}, "
                             f"backend_options={backend_options}: use backend='process' or 'ray' for more workers")
        self.backend_name, self.workers = backend, int(workers)
        self.backend_options = dict(backend_options or {})
        self._backend = None
        _check_choice("test_accuracy", test_accuracy, ("eager", "lazy"))
        self.test_accuracy_mode = test_accuracy

        n, max_layers = len(self.start_architecture), len(self.teacher_architecture)
        self.num_layers = n
        num_actions = {"remove": 2, "shrink": len(self.ratios), "joint": len(self.ratios) + 1}[stage]
        self.action_space = spaces.Discrete(num_actions)
        self.observation = observation
        self.observation_space = observation_space(observation, max_layers, num_actions)
        self._static_obs = static_features(self.start_architecture, max_layers, stage,
                                           width_scale(self.teacher_architecture))
        self._layer_masks = self._make_masks()
        self._full_width_action = {"remove": KEEP, "shrink": self.ratios.index(1.0),
                                   "joint": self.ratios.index(1.0)}[stage]
        self._episodes = 0  # since the last reset with a seed: N2N's update index counts from there
        self._short_schedules = 0  # seeded resets that restarted the schedule before the anneal's end
        self._result_listeners: list = []
        self._t = 0
        self._actions: list[int] = []
        self._decisions: list = []
        self._illegal: list[int] = []
        self._update = 0
        self._obs = self._static_obs.copy()
        self._last_info: dict[str, Any] = {}
        self._neutral_info: dict[str, Any] = {}

    # ---- Gymnasium API -----------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = check_reset_options(options)
        super().reset(seed=seed)
        self.evaluator  # noqa: B018 - data and teacher are settled before an episode is played
        update = options.get("update")
        if seed is not None:  # a seeded reset starts the schedule over, like np_random: same seed, same rewards
            if update is None and 0 < self._episodes < self.episodes_per_update * self.penalty_horizon:
                self._short_schedules += 1
                if self._short_schedules == 2 and self.penalty == "anneal" and self.constraints:
                    # a loop seeding every reset stays at update 0, where the anneal does not penalise
                    warnings.warn(
                        "reset(seed=...) every few episodes keeps N2N's update index at 0, where "
                        "penalty='anneal' gives a violating student its full reward: seed the first reset "
                        "only, pass reset(options={'update': u}), or use penalty='violation' or 'hard'",
                        UserWarning, stacklevel=2)
            self._episodes = 0
        self._update = update if update is not None else self._episodes // self.episodes_per_update
        self._t = 0
        self._actions, self._decisions, self._illegal = [], [], []
        self._obs = self._static_obs.copy()
        self._obs[0, COLUMN["current"]] = 1
        # every step's info has the terminal info's keys, types and shapes (replay buffers store
        # info: Tianshou, TorchRL), neutral until the last step; computed once per episode, and
        # pickled with the env, so a step never needs the evaluator
        self._neutral_info = self._result_info(None, "", None, [], [], self._update)
        self._neutral_info.update(reward=0.0, eval_seconds=0.0)
        return self._observe(), self._step_info()

    def step(self, action):
        if self._t >= self.num_layers:
            raise RuntimeError("the episode has ended; call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside the action space {self.action_space}: "
                             f"pass an integer in [0, {self.action_space.n - 1}]")
        a, t = int(action), self._t
        self._actions.append(a)
        if not self._layer_masks[t, a]:
            self._illegal.append(t)
            a = self._full_width_action
        decision = self._decision(a)
        self._decisions.append(decision)
        row = self._obs[t]
        row[COLUMN["decided"]], row[COLUMN["current"]] = 1, 0
        row[COLUMN["removed"]] = decision is None
        row[COLUMN["ratio"]] = 0.0 if decision is None else decision
        self._t += 1
        if self._t < self.num_layers:
            self._obs[self._t, COLUMN["current"]] = 1
            return self._observe(), 0.0, False, False, self._step_info()
        self._episodes += 1
        info = self._terminal_info()
        self._last_info = info
        self._tell(info, self._update, True)
        return self._observe(), float(info["reward"]), True, False, info

    def add_result_listener(self, listener) -> None:
        """Call ``listener(info, update, stepped)`` with every student result this env
        produces: the terminal info of each episode played through ``step`` (``stepped``
        True) and of each action list scored by :meth:`evaluate_many` (False). Budgets are
        counted here, where evaluations happen (``n2n_gym.envs.wrappers.BudgetWrapper``)."""
        self._result_listeners.append(listener)

    def _tell(self, info: dict, update: int, stepped: bool) -> None:
        for listener in list(self._result_listeners):
            listener(info, update, stepped)

    def layer_masks(self) -> np.ndarray:
        """Every layer's allowed actions, (layers, actions) bool (known without a teacher)."""
        return self._layer_masks.copy()

    def action_masks(self) -> np.ndarray:
        """The allowed actions of the current layer (for sb3-contrib's MaskablePPO)."""
        t = min(self._t, self.num_layers - 1)
        return self._layer_masks[t].copy()

    def render(self):
        if self.render_mode != "ansi":
            return None
        return self.describe()

    def close(self):
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._evaluator is not None and hasattr(self._evaluator.cache, "close"):
            self._evaluator.cache.close()
        self._evaluator = None

    # ---- what the env knows ------------------------------------------------------
    def decisions_for(self, actions: Sequence[int]) -> list:
        """The per-layer decisions (None = remove, else width ratio) that ``actions`` make."""
        out = []
        for t, a in enumerate(actions):
            a = int(a)
            if not 0 <= a < self.action_space.n:
                raise ValueError(f"action {a} at layer {t} is outside the action space {self.action_space}")
            if not self._layer_masks[t, a]:
                a = self._full_width_action
            out.append(self._decision(a))
        return out

    def student_architecture(self, actions: Sequence[int]) -> Architecture:
        """The student that a full action list gives (raises InvalidStudent with the reason)."""
        if len(actions) != self.num_layers:
            raise ValueError(f"need {self.num_layers} actions, got {len(actions)}")
        return apply_decisions(self.start_architecture, self.decisions_for(actions), self.min_width)

    @property
    def evaluator(self):
        """Loads data and teacher on first use (gym.make stays cheap)."""
        if self._evaluator is None:
            data = load_dataset(self.dataset_name, self.data_root).to(self.device)
            if self._imported is not None:
                teacher = teacher_from_import(self._imported, data, device=self.device,
                                              path=str(self.teacher_checkpoint or ""),
                                              check=not self.allow_untrained_teacher)
            else:
                teacher = load_teacher(self.teacher_name, data, checkpoint=self.teacher_checkpoint,
                                       recipe=self.teacher_recipe, device=self.device, progress=self.progress,
                                       max_minutes=self.teacher_max_minutes)
            if self._cache_arg is False:
                cache = NullCache()
            else:
                cache = ResultCache(None if self._cache_arg is True else self._cache_arg)
            evaluator = Evaluator(teacher, data, self.device, cache, lazy_test=self.test_accuracy_mode == "lazy")
            evaluator.prepare(self.protocol)  # a protocol's supernet is found now, or a clear error
            self._evaluator = evaluator
        return self._evaluator

    @property
    def backend(self):
        """The evaluation backend (``backend``/``workers`` kwargs), started on first use."""
        if self._backend is None:
            self._backend = make_backend(self.backend_name, self.evaluator, self.workers, **self.backend_options)
        return self._backend

    @property
    def teacher(self):
        return self.evaluator.teacher

    def student_test_accuracy(self, actions: Sequence[int]) -> float:
        """Test accuracy of the student that ``actions`` make, under the env's protocol and
        seed: from the cache, else measured (with ``test_accuracy="lazy"`` the student is
        trained again, to the same weights). Raises ``InvalidStudent`` for an invalid one."""
        return self.evaluator.test_accuracy(self.student_architecture(actions), self.protocol, self.eval_seed)

    def evaluate_many(self, actions_list: Sequence[Sequence[int]], update: int | None = None) -> list[tuple[float, dict]]:
        """The terminal ``(reward, info)`` of each full action list, evaluated together on the
        backend (its workers train the students concurrently).

        The same as playing each list through ``reset``/``step`` with the same ``update``
        (default: the current one): equal rewards and info, except that the env's own
        episode state (``describe``, the episode counter) is left as it is. An agent can
        step an episode up to its last layer, keep the last action, and score a whole batch
        of episodes here (``agents/n2n.py`` does)."""
        update = self._update if update is None else int(update)
        students = [self._student(actions) for actions in actions_list]
        requests = [(arch, self.protocol, self.eval_seed) for arch, _, _ in students if arch is not None]
        results = iter(self.backend.evaluate_many(requests) if requests else [])
        out = []
        for actions, (arch, reason, illegal) in zip(actions_list, students):
            result = next(results) if arch is not None else None
            info = self._result_info(arch, reason, result, [int(a) for a in actions], illegal, update)
            self._tell(info, update, False)
            out.append((float(info["reward"]), info))
        return out

    def describe(self) -> str:
        """A text table of the starting architecture with the decisions made so far."""
        arch = self.start_architecture
        lines = arch.table().splitlines()
        out = [lines[0] + "  decision"]
        for i, line in enumerate(lines[1:-1]):
            if i < len(self._decisions):
                d = self._decisions[i]
                mark = "remove" if d is None else ("keep" if d == 1.0 else f"x{d:g}")
            else:
                mark = "<- now" if i == self._t else ""
            out.append(f"{line}  {mark}")
        out.append(lines[-1] + f"  | stage {self.stage}, layer {min(self._t, self.num_layers)}/{self.num_layers}")
        if self._last_info and self._t >= self.num_layers:
            i = self._last_info
            estimated = i["valid"] and abs(i["measured_accuracy"] - i["accuracy"]) > 1e-9  # a calibrated protocol
            acc = (f"estimated val acc {i['accuracy']:.4f} (measured {i['measured_accuracy']:.4f})" if estimated
                   else f"val acc {i['accuracy']:.4f}")
            out.append(f"student: reward {i['reward']:.4f}, {acc}, "
                       f"{i['params']:,} params ({i['compression']:.2f}x), valid={i['valid']} {i['reason']}")
        return "\n".join(out)

    def __getstate__(self) -> dict:
        # the evaluator holds the data set, the teacher and an SQLite connection: the
        # arguments it is built from are pickled instead, and it is rebuilt on first use
        # (and so are the backend's workers: processes or Ray actors)
        state = self.__dict__.copy()
        state["_evaluator"] = None
        state["_backend"] = None
        state["_result_listeners"] = []  # (a budget watches one process's env)
        return state

    # ---- internals ---------------------------------------------------------------
    def _observe(self):
        return encode_observation(self._obs, self.observation, self._layer_masks[min(self._t, self.num_layers - 1)])

    def _decision(self, a: int):
        if self.stage == "remove":
            return None if a == REMOVE else 1.0
        if self.stage == "joint" and a == len(self.ratios):
            return None
        return self.ratios[a]

    def _make_masks(self) -> np.ndarray:
        n_act = self.action_space.n
        masks = np.zeros((self.num_layers, n_act), dtype=bool)
        full = self.ratios.index(1.0)
        for i, rule in enumerate(layer_rules(self.start_architecture)):
            if self.stage == "remove":
                masks[i, KEEP], masks[i, REMOVE] = 1, rule.removable
                continue
            if rule.shrinkable:
                masks[i, : len(self.ratios)] = 1
            else:
                masks[i, full] = 1
            if self.stage == "joint":
                masks[i, len(self.ratios)] = rule.removable
        return masks

    def _terminal_masks(self) -> dict[str, Any]:
        t = self.num_layers - 1
        return {"action_mask": self._layer_masks[t].copy(), "layer_masks": self._layer_masks.copy(),
                "layer_index": self.num_layers, "num_layers": self.num_layers, "stage": self.stage}

    def _step_info(self) -> dict[str, Any]:
        t = min(self._t, self.num_layers - 1)
        return {**self._neutral_info, "action_mask": self._layer_masks[t].copy(),
                "layer_masks": self._layer_masks.copy(), "layer_index": self._t,
                "actions": _padded(self._actions, self.num_layers)}

    def _student(self, actions: Sequence[int]) -> tuple[Architecture | None, str, list[int]]:
        """(student or None, why not, layers whose action was disallowed) of a full action list."""
        if len(actions) != self.num_layers:
            raise ValueError(f"need {self.num_layers} actions, got {len(actions)}")
        for t, a in enumerate(actions):  # the same check as step()'s
            if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)) or not 0 <= a < self.action_space.n:
                raise ValueError(f"action {a!r} at layer {t} is outside the action space {self.action_space}: "
                                 f"pass integers in [0, {self.action_space.n - 1}]")
        illegal = [t for t, a in enumerate(actions) if not self._layer_masks[t, int(a)]]
        if illegal and self.illegal_action == "invalid":
            return None, f"disallowed action(s) at layer(s) {illegal}", illegal
        try:
            return apply_decisions(self.start_architecture, self.decisions_for(actions), self.min_width), "", illegal
        except (InvalidStudent, ArchitectureError) as exc:  # a student problem: -1 with the reason
            return None, str(exc), illegal

    def _terminal_info(self) -> dict[str, Any]:
        arch, reason, illegal = self._student(self._actions)
        result = self.backend.evaluate(arch, self.protocol, self.eval_seed) if arch is not None else None
        return self._result_info(arch, reason, result, list(self._actions), illegal, self._update)

    def _result_info(self, arch, reason, result, actions, illegal, update) -> dict[str, Any]:
        ev = self.evaluator
        teacher = ev.teacher
        start = time.perf_counter()
        if result is not None:
            valid, reason = result.valid, result.reason
        else:
            valid = False
        params = result.params if result else 0
        acc = result.accuracy if result else 0.0
        reward = n2n_reward(
            student_params=params, teacher_params=teacher.params, student_accuracy=acc,
            teacher_accuracy=teacher.val_accuracy, valid=valid, constraints=self.constraints,
            properties={"flops": result.flops if result else 0}, penalty=self.penalty,
            update=update, horizon=self.penalty_horizon,
        )
        return {
            **self._terminal_masks(),
            "reward": reward.value,
            "valid": valid,
            "reason": reason,
            "accuracy": acc,
            "measured_accuracy": result.measured_accuracy if result and result.measured_accuracy is not None else acc,
            "test_accuracy": result.test_accuracy if result else 0.0,
            "teacher_accuracy": teacher.val_accuracy,
            "teacher_test_accuracy": teacher.test_accuracy,
            "params": params,
            "teacher_params": teacher.params,
            "flops": result.flops if result else 0,
            "teacher_flops": teacher.architecture.flops,
            "compression": teacher.params / params if params else 0.0,
            "r_c": reward.r_c,
            "r_a": reward.r_a,
            # fixed types and shapes at every step (see _step_info): strings, never None, and
            # lists of one length per env
            "violated_constraints": "; ".join(reward.violated),
            "architecture": arch.to_json() if arch is not None else "",
            "actions": _padded(actions, self.num_layers),
            "illegal_layers": [t in illegal for t in range(self.num_layers)],
            "eval_seconds": result.seconds if result else time.perf_counter() - start,
            "cached": bool(result.cached) if result else False,
            "protocol": self.protocol.name,
            "update": update,
            "eval_seed": self.eval_seed,
            "data_variant": ev.data.variant,
            "teacher_sha256": teacher.sha256,
            "teacher_pin": teacher.pin or "",
            "data_digest": ev.data.digest,
        }


def _unexpected_arguments(unknown: dict) -> TypeError:
    """Python's own wording for the first unknown argument (callers such as TorchRL's
    ``GymEnv`` match it to drop optional arguments), then the closest valid names."""
    valid = [p for p in inspect.signature(N2NEnv.__init__).parameters if p not in ("self", "unknown")]
    hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, valid, 1)) else repr(k)
             for k in unknown]
    first, *others = hints
    more = f", and {', '.join(others)}" if others else ""
    return TypeError(f"N2NEnv.__init__() got an unexpected keyword argument {first}{more}; "
                     f"valid arguments: {', '.join(valid)}")


def _padded(actions: Sequence[int], length: int) -> list[int]:
    """The actions so far as ints, then -1 for each layer not decided yet."""
    return [int(a) for a in actions] + [-1] * (length - len(actions))


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _parse_ratios(ratios, stage: str) -> tuple[float, ...]:
    if ratios is None:
        table = (1.0,)
    elif isinstance(ratios, str):
        if ratios not in RATIO_TABLES:
            raise ValueError(f"ratios must be one of {sorted(RATIO_TABLES)} or a sequence of floats, got {ratios!r}")
        table = RATIO_TABLES[ratios]
    else:
        table = tuple(float(r) for r in ratios)
    if not table or any(not 0 < r <= 1 for r in table) or 1.0 not in table:
        raise ValueError(f"ratios must be values in (0, 1] including 1.0, got {table}")
    return (1.0,) if stage == "remove" else table  # checked even where unused: a bad table is a mistake


def _parse_start(start, teacher: Architecture) -> Architecture:
    if start is None:
        return teacher
    if isinstance(start, Architecture):
        arch = start
    else:
        text = str(start)
        if not text.lstrip().startswith("{"):
            try:
                with open(text) as f:
                    text = f.read()
            except OSError as exc:
                raise ValueError(f"start_architecture {text[:80]!r} is neither architecture JSON nor a readable "
                                 f"file ({exc.strerror}); pass an Architecture, its JSON or the path to it") from None
        try:
            arch = Architecture.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and ArchitectureError are ValueErrors
            raise ValueError(f"start_architecture is not valid architecture JSON ({type(exc).__name__}: {exc}); "
                             "use Architecture.to_json() or an episode's info['architecture']") from None
    check_start_architecture(arch, teacher)
    try:
        arch.shapes()
    except ArchitectureError as exc:
        raise ValueError(f"start_architecture cannot be built: {exc}") from exc
    return arch
