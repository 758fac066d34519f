"""Layer 0, utilities every layer may use: argument checks (:mod:`.checks`), crash-safe file
writes, content digests and the cache-folder rule (:mod:`.files`).

May import: nothing of n2n_gym.
"""
