"""n2n_gym.agents.sb3_baselines: the Stable-Baselines3 agents through the benchmark runner: parallel
envs, rollouts aligned to episodes, W&B metrics (tiny protocol, the small shared teacher recipe)."""

from __future__ import annotations

import pytest
from conftest import BENCH_ENV_KWARGS, bench

ENV_KWARGS = BENCH_ENV_KWARGS


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
