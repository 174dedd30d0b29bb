"""Empirical Bayes matrix factorization (Wang & Stephens 2021) and its covariate-moderated variant
(cEBMF, Denault et al.) on a planted sparse factor model: the number of factors, the sparsity and
the noise level are learned from the data.

    python examples/ebmf.py            # 100 x 60, two factors
    python examples/ebmf.py --paper    # 1000 x 200, five factors
"""
import sys

import numpy as np

import lowrank_hpc as lr

paper = "--paper" in sys.argv[1:]
n, p, K = (1000, 200, 5) if paper else (100, 60, 2)
rng = np.random.default_rng(0)
z = rng.standard_normal(n)                                  # a covariate of the rows
active = rng.random((n, K)) < 1 / (1 + np.exp(-(2 * z[:, None] - 1)))
L = rng.standard_normal((n, K)) * 2 * active                # sparse loadings, denser where z is large
F = rng.standard_normal((p, K)) * (rng.random((p, K)) < 0.3)
signal = L @ F.T
Y = signal + rng.standard_normal((n, p))

u, s, vt = np.linalg.svd(Y, full_matrices=False)
svd = (u[:, :K] * s[:K]) @ vt[:K]
print(f"{n} x {p}, {K} planted sparse factors, noise variance 1")
print(f"truncated SVD (rank {K}): relative error {np.linalg.norm(svd - signal) / np.linalg.norm(signal):.3f}")
for name, covariates in (("EBMF", None), ("cEBMF", z)):
    model = lr.EBMF(max_factors=2 * K, random_state=0).fit(Y, row_covariates=covariates)
    error = np.linalg.norm(model.reconstruct() - signal) / np.linalg.norm(signal)
    monotone = bool(np.all(np.diff(model.elbo_history_) >= -1e-9 * np.abs(model.elbo_history_[1:])))
    print(f"{name:5s}: {model.n_factors_} factors, relative error {error:.3f}, noise variance "
          f"{model.noise_variance_:.3f}, ELBO {model.elbo_:.1f} (non-decreasing: {monotone})")
