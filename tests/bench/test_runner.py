"""The comparison baselines (agents/sb3_baselines.py, agents/random_search.py), the N2N
adapter of the benchmark runner, and the third-party example (examples/cleanrl_style.py).

Every agent runs a budget of 2 evaluations on the embedded digits env with the tiny
protocol and the small shared teacher recipe of conftest.py.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
from conftest import SMALL_DIGITS_RECIPE

REPO = pathlib.Path(__file__).resolve().parents[1]
from n2n_gym.bench import runner
from n2n_gym.bench.records import BudgetTracker, read_records

ENV_KWARGS = {"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}
SB3_AGENTS = ("ppo", "a2c", "dqn", "maskable_ppo", "recurrent_ppo")


def _n2n_available() -> bool:
    try:
        import n2n_gym.agents.n2n  # noqa: F401
    except ImportError:
        return False
    return True


ALL_AGENTS = ["random", *SB3_AGENTS] + (["n2n"] if _n2n_available() else [])


def bench(agent: str, budget: int = 2, seed: int = 0, **kw) -> dict:
    kw.setdefault("env_kwargs", dict(ENV_KWARGS))
    return runner.run_one("N2N-DigitsNet-Digits-v0", agent, seed, budget, protocol="tiny", device="cpu", **kw)


@pytest.mark.parametrize("agent", ALL_AGENTS)
def test_every_agent_spends_exactly_its_budget(agent, digits_teacher, tmp_path):
    results = tmp_path / "r.jsonl"
    record = bench(agent, budget=2, results=results)
    b = record["budget"]
    assert b["evaluations"] == 2 and b["stop_reason"] == "budget"
    assert b["episodes"] >= 2 and b["env_steps"] >= 2 * 9
    assert len(record["curve"]["best_reward"]) == 2
    assert record["curve"]["best_reward"][-1] == pytest.approx(record["best"]["reward"])
    assert record["best"]["architecture"] and len(record["best"]["actions"]) == 9
    assert record["teacher"]["sha256"] == digits_teacher.sha256
    assert record["env_kwargs"] == ENV_KWARGS  # replayable: the small recipe, no runtime-only kwargs
    assert read_records(results) == [record]
    if agent == "n2n":  # why a stage ended early, when it did: {} here (the budget ended the run)
        assert record["extra"]["exhausted"] == {} and set(record["extra"]["lrs"]) <= {"remove", "shrink"}


@pytest.mark.parametrize("agent", ["random", "maskable_ppo"])
def test_masked_agents_never_take_a_forbidden_action(agent, digits_teacher):
    # with illegal_action="invalid", one forbidden action would make the student invalid
    record = bench(agent, budget=3, env_kwargs={**ENV_KWARGS, "illegal_action": "invalid"})
    assert record["budget"]["invalid_episodes"] == 0


@pytest.mark.parametrize("agent,stage", [("random", "remove"), ("ppo", "shrink"), ("dqn", "remove")])
def test_agents_run_on_any_stage(agent, stage, digits_teacher):
    record = bench(agent, budget=2, stage=stage)
    assert record["stage"] == stage and record["best"]["replay"]["stage"] == stage
    assert record["budget"]["evaluations"] == 2


def test_cache_hits_do_not_count_and_max_episodes_stops_a_stuck_agent(digits_teacher):
    # the remove stage of the digits net has few distinct students: a long budget cannot be
    # spent, and the run stops at max_episodes instead of looping forever
    record = bench("random", budget=1000, stage="remove", max_episodes=40)
    b = record["budget"]
    assert b["stop_reason"] == "max_episodes" and b["episodes"] == 40
    assert b["evaluations"] < 40 and b["cached_episodes"] > 0
    assert b["evaluations"] + b["cached_episodes"] + b["invalid_episodes"] == 40
    assert len(record["students"]["data"]) == b["evaluations"]


@pytest.mark.parametrize("agent", ["maskable_ppo", "dqn", "a2c"])
def test_sb3_agents_step_several_envs_in_parallel(agent, digits_teacher, tmp_path):
    # n_envs=2: SB3's SubprocVecEnv, one process per env, sharing the run's cache; the budget
    # is counted in this process and no student is trained twice
    record = bench(agent, budget=4, hparams={"n_envs": 2}, results=tmp_path / "r.jsonl")
    b = record["budget"]
    assert b["stop_reason"] == "budget" and 4 <= b["evaluations"] <= 5  # a vector step may overshoot by 1
    hashes = [row[record["students"]["columns"].index("arch_hash")] for row in record["students"]["data"]]
    assert len(hashes) == b["evaluations"] == len(set(hashes))
    assert b["env_steps"] == 9 * b["episodes"]
    assert record["hparams"]["n_envs"] == 2
    if agent == "maskable_ppo":  # an update still sees 4 whole episodes: 2 per env
        assert record["hparams"]["n_steps"] == 18 and record["hparams"]["batch_size"] == 36
    if agent == "dqn":  # trains after each episode, on all the envs' new transitions
        assert record["hparams"]["train_freq"] == [9, "step"] and record["hparams"]["gradient_steps"] == 18


def test_sb3_n_envs_is_checked(digits_teacher):
    with pytest.raises(ValueError, match="n_envs must be an integer >= 1"):
        bench("ppo", hparams={"n_envs": 0})
    with pytest.raises(ValueError, match="cannot train per episode with several envs"):
        bench("dqn", hparams={"n_envs": 2, "train_freq": [1, "episode"]})
    with pytest.raises(ValueError, match="use n_envs with the default backend='inline'"):
        bench("a2c", hparams={"n_envs": 2}, env_kwargs={**ENV_KWARGS, "backend": "process", "workers": 2})


def test_sb3_overshoot_of_parallel_envs_is_recorded_and_validates(digits_teacher, tmp_path):
    # 3 envs end their episodes together: a budget of 4 can end at 6 evaluations, which the
    # record states (budget.parallel) and its own checks accept; an integer train_freq passes through
    from n2n_gym.bench.records import record_errors

    record = bench("dqn", budget=4, hparams={"n_envs": 3, "train_freq": 4}, results=tmp_path / "r.jsonl")
    b = record["budget"]
    assert b["parallel"] == 3 and 4 <= b["evaluations"] <= 6 and record["hparams"]["train_freq"] == 4
    assert record_errors(record) == []
    over = {**record, "budget": {**b, "evaluations": 7, "episodes": b["episodes"] + 7}}
    assert any("plus the 2 that 3 envs" in e for e in record_errors(over))


def test_sb3_defaults_align_rollouts_to_episodes():
    from n2n_gym.agents.sb3_baselines import ALGOS, default_hparams

    for algo in ALGOS:
        hp = default_hparams(algo, episode_length=9, budget=60)
        assert hp["gamma"] == 1.0
        if "n_steps" in hp:
            assert hp["n_steps"] % 9 == 0 and hp["gae_lambda"] == 1.0
    assert default_hparams("dqn", 9, 60)["train_freq"] == [1, "episode"]
    with pytest.raises(ValueError):
        default_hparams("sac", 9, 60)


def test_hparam_overrides_are_recorded(digits_teacher):
    record = bench("ppo", budget=2, hparams={"episodes_per_rollout": 2, "learning_rate": 3e-4})
    hp = record["hparams"]
    assert hp["n_steps"] == 18 and hp["batch_size"] == 18 and hp["learning_rate"] == 3e-4
    assert record["extra"]["sb3_version"]


def test_agent_run_function_works_without_the_runner(digits_teacher):
    from n2n_gym.agents import random_search

    out = random_search.run("N2N-DigitsNet-Digits-v0", seed=1, budget=2,
                            env_kwargs={**ENV_KWARGS, "protocol": "tiny", "progress": False, "device": "cpu"})
    tracker = out["tracker"]
    assert isinstance(tracker, BudgetTracker) and tracker.evaluations == 2 and tracker.best["valid"]


def test_register_agent_extends_the_runner(digits_teacher):
    from n2n_gym.agents import random_search

    def my_agent(env_id, seed, budget, env_kwargs=None, hparams=None, **kw):
        return random_search.run(env_id, seed, budget, env_kwargs, hparams, **kw)

    runner.register_agent("my_random", my_agent, "a test agent")
    try:
        record = bench("my_random", budget=2)
        assert record["agent"] == "my_random" and record["budget"]["evaluations"] == 2
    finally:
        runner.AGENTS.pop("my_random")
        runner._LOADED.pop("my_random")


# ---------------------------------------------------------------------------- the README example
EXAMPLE = REPO / "examples" / "cleanrl_style.py"


def test_readme_snippet_runs(digits_teacher, capsys):
    doc = ast.get_docstring(ast.parse(EXAMPLE.read_text()))
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert 'protocol="fast"' in code and "range(30)" in code
    code = code.replace('protocol="fast"', f'protocol="tiny", teacher_recipe={SMALL_DIGITS_RECIPE!r}, '
                                           f'progress=False, device="cpu"').replace("range(30)", "range(3)")
    exec(compile(code, str(EXAMPLE), "exec"), {})
    assert len(re.findall(r"reward [-0-9.]+ ", capsys.readouterr().out)) == 3


def test_example_script_main(digits_teacher):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cleanrl_style", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    best = mod.main(["--episodes", "2", "--protocol", "tiny",
                     "--env-kwargs", f'{{"teacher_recipe": {__import__("json").dumps(SMALL_DIGITS_RECIPE)}, '
                                     f'"progress": false, "device": "cpu"}}'])
    assert len(best["actions"]) == 9 and best["reward"] <= 1.0


def test_sb3_metrics_reach_wandb_without_tensorboard():
    from n2n_gym.agents.sb3_baselines import _wandb_logger

    class FakeRun:
        logged: list = []

        def log(self, data):
            self.logged.append(data)

    run = FakeRun()
    logger = _wandb_logger(run)
    logger.record("train/loss", 0.5)
    logger.record("rollout/ep_rew_mean", 0.9)
    logger.record("time/text", "not a number")
    logger.dump(step=36)
    assert run.logged == [{"sb3/train/loss": 0.5, "sb3/rollout/ep_rew_mean": 0.9, "sb3/timesteps": 36}]
