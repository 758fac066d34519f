"""Layer 5, the environments: the MDP in one file (:mod:`.env`, ``N2NEnv``), the registered ids
(:mod:`.registration`), its argument checks (:mod:`.checks`), the wrappers agents use
(:mod:`.wrappers`: budget, flat observations, ...) and the adapters RL libraries need
(:mod:`.adapters`: action masks through ``gym.make``'s wrappers, dict keys, numpy info).

May import: n2n_gym.utils, .ir, .data, .teachers, .evaluation.
"""
