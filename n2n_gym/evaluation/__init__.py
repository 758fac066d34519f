"""Layer 4, evaluation: what a student is worth. The evaluation protocols (:mod:`.protocols`),
the distillation loop (:mod:`.distill`), N2N's reward R = Rc * Ra, in one function
(:mod:`.reward`), the crash-safe result cache (:mod:`.cache`), the evaluator that turns an
architecture into a scored student (:mod:`.evaluator`), the backends that run many of them
(:mod:`.backends`: process pool, Ray), the weight-sharing supernet (:mod:`.supernet`), the
final distillation of a compressed network (:mod:`.final`) and deployment measurements
(:mod:`.deploy`).

May import: n2n_gym.utils, .ir, .data, .teachers.

``from n2n_gym.evaluation import Evaluator`` keeps working: the names of :mod:`.evaluator` are
served from here, loaded on first use.
"""

import importlib as _importlib

__all__ = ["EvalResult", "Evaluator", "StudentBuildError", "StudentEvaluationWarning", "result_row_problem"]


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_importlib.import_module("n2n_gym.evaluation.evaluator"), name)
