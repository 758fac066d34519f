"""Layer 1, the architecture IR: a network as a sequence of layers (:mod:`.arch`), the teacher
zoo written in it (:mod:`.zoo`), the edits that turn a teacher into a student
(:mod:`.edits`), the MDP's per-layer state encoding (:mod:`.encoding`), the PyTorch module of
an architecture with weight inheritance (:mod:`.build`) and student export (:mod:`.students`).
One IR is shared by the env, the agents, the evaluator and the exports.

May import: n2n_gym.utils.
"""
