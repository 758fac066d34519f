"""benchmarks/tas_vs_n2n.py: TAS and N2N at one budget, with their compute reported."""

from __future__ import annotations

import json
import pathlib

import pytest
from conftest import SMALL_DIGITS_RECIPE

from n2n_gym.bench.records import read_records

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


def test_tas_vs_n2n_runs_both_at_one_budget_and_reports_their_compute(tmp_path):
    from n2n_gym.benchmarks import tas_vs_n2n

    results = tmp_path / "results.jsonl"
    argv = ["--budget", "2", "--seeds", "0", "--protocol", "tiny", "--results", str(results), "--out", str(tmp_path),
            "--env-kwargs", json.dumps({"teacher_recipe": dict(SMALL_DIGITS_RECIPE)})]
    with pytest.raises(SystemExit, match="add --run"):
        tas_vs_n2n.main(argv[:6] + ["--results", str(FIXTURES / "bench-records.jsonl")])
    result = tas_vs_n2n.main(argv + ["--run"])
    n2n, tas = result["runs"]["n2n"][0], result["runs"]["tas"][0]
    assert n2n["evaluations"] == 2 and tas["evaluations"] == 1
    # an RL evaluation costs epochs_per_evaluation; TAS reports what its search really spent
    # (at least one step of batch 256 here, which is more than 2 tiny evaluations)
    assert n2n["student_epochs"] == pytest.approx(2 * result["epochs_per_evaluation"])
    assert tas["student_epochs"] > result["epochs_per_evaluation"]
    assert (tmp_path / "tas_vs_n2n_n2n-digitsnet-digits-v0.png").stat().st_size > 0
    assert len(read_records(results)) == 2
    tas_vs_n2n.main(argv + ["--run"])  # nothing missing: runs nothing
    assert len(read_records(results)) == 2
