"""The papers' methods one call away (issue 15): Guess & Check on deep factorizations, empirical
Bayes matrix factorization (EBMF / cEBMF), and the closed-form dynamics of the quartic word2vec
loss. Lifted matrix sensing is ``lowrank_hpc.recover.lifted_sensing``; the EBMF estimator is
``lowrank_hpc.EBMF``."""
from .ebmf import EBMFResult, PointNormalPrior, ebmf, point_normal_posterior
from .guess_and_check import GuessAndCheckResult, guess_and_check
from .word2vec import Word2VecDynamics, quartic_word2vec_dynamics, word2vec_target

__all__ = ["EBMFResult", "GuessAndCheckResult", "PointNormalPrior", "Word2VecDynamics", "ebmf", "guess_and_check",
           "point_normal_posterior", "quartic_word2vec_dynamics", "word2vec_target"]
