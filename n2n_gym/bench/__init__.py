"""Layer 6, benchmarking (product code behind ``n2n-gym bench / leaderboard / validate``): the
runner that runs agents x seeds at a budget (:mod:`.runner`; agents are found by entry-point
strings, as Gymnasium finds envs, so this layer imports none), the JSONL records and their
checks (:mod:`.records`), the leaderboard with rliable intervals (:mod:`.leaderboard`) and
the replay / re-run validation of records (:mod:`.validate`).

May import: n2n_gym.utils, .ir, .data, .teachers, .evaluation, .envs.
"""
