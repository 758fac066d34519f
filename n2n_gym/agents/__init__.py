"""Layer 7, the agents: one file each, read top to bottom (CleanRL's rule): settings
dataclass, policy, loop. N2N's recurrent REINFORCE (:mod:`.n2n`), the baselines (random
search, Optuna TPE, regularized evolution, SB3 / sb3-contrib, magnitude pruning) and TAS.
The benchmark runner finds them by entry-point string (``n2n_gym.bench.runner.AGENTS``).

May import: the public names of every lower layer (n2n_gym.utils, .ir, .data, .teachers,
.evaluation, .envs, .bench).
"""
