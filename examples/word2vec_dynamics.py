"""The quartic word2vec loss learns its embeddings' eigen-directions one at a time (Karkada, Simon,
Bahri and DeWeese, NeurIPS 2025): the closed-form gradient flow on the co-occurrence statistics of
a synthetic topic-model corpus, its learning times and its stepwise singular values.

    python examples/word2vec_dynamics.py            # V = 200 words, d = 6
    python examples/word2vec_dynamics.py --paper    # V = 10,000 words, d = 200: an eigh of 10^4 x 10^4, then
                                                    # ~1,300 small SVDs (runtime in BENCHMARKS.md)
"""
import sys
import time

import numpy as np

import lowrank_hpc as lr

paper = "--paper" in sys.argv[1:]
V, d, topics = (10_000, 200, 400) if paper else (200, 6, 10)
rng = np.random.default_rng(0)
# Co-occurrence of a topic model with Zipfian word frequencies: P = sum_k pi_k phi_k phi_k^T.
frequency = 1.0 / np.arange(1, V + 1) ** 0.8
phi = rng.dirichlet(np.full(V, 0.05), size=topics) * frequency
phi /= phi.sum(axis=1, keepdims=True)
weights = rng.dirichlet(np.ones(topics))
cooccurrence = (phi.T * weights) @ phi + 1e-3 * np.outer(frequency, frequency) / frequency.sum() ** 2

# times=None: 200 points up to 1.5 times the last learning time (60 at paper size, without the
# 60 x 10,000 x 200 embeddings, which the curves below do not need).
start = time.perf_counter()
result = lr.research.quartic_word2vec_dynamics(cooccurrence, d, init_scale=1e-6, seed=0,
                                               times=60 if paper else None, keep_embeddings=not paper)
print(f"closed-form dynamics: {time.perf_counter() - start:.1f} s")
print(f"V = {V}, d = {d}: top eigenvalues of M* {np.round(result.eigenvalues[:5], 2)}")
print(" k  lambda_k   learning time   predicted (small init)")
for k in range(min(d, 10)):
    print(f"{k + 1:2d} {result.eigenvalues[k]:8.3f} {result.learning_times[k]:14.3f} "
          f"{result.predicted_learning_times[k]:14.3f}")
for i in range(0, result.times.size, 20 if not paper else 6):
    rank = int(np.sum(result.singular_values[i] ** 2 > 0.5 * result.eigenvalues[:d]))
    print(f"t = {result.times[i]:8.3f}: loss {result.loss[i]:.4e}, directions learned {rank}")
