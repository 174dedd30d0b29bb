// Thin SVD of a small tall matrix by one-sided (Hestenes) Jacobi rotations.
//
// soft-impute's half-steps take the SVD of an n x r matrix (r ~ 20) twice a sweep. LAPACK's
// gesdd spends ~90 us on the r x r bidiagonal part of such a matrix whatever n is, half of a
// small solve's time; one-sided Jacobi needs only the dot products of column pairs, and near
// convergence the columns are already nearly orthogonal, so one or two sweeps of r^2 / 2 dots
// suffice. Its orthogonality test is relative to each pair's own norms, which keeps small
// singular values accurate to working precision (Demmel and Veselic 1992).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu_backend.hpp"

namespace lowrank_hpc::cpu {

namespace {

constexpr double kNegligibleSquaredNorm = 0x1p-900;

double dot(const double* a, const double* b, int64_t n) {
  double total = 0.0;
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < n; ++k) total += a[k] * b[k];
  return total;
}

// (a, b) <- (c a - s b, s a + c b).
void rotate(double* a, double* b, int64_t n, double c, double s) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const double x = a[k], y = b[k];
    a[k] = c * x - s * y;
    b[k] = s * x + c * y;
  }
}

// Replaces the zero rows of basis (count x n, the others orthonormal) by unit vectors orthogonal
// to every other row: the canonical vectors e_0, e_1, ... projected out twice (Kahan), keeping
// those that retain at least half their norm.
void complete_basis(double* basis, const std::vector<bool>& zero, int64_t count, int64_t n) {
  int64_t candidate = 0;
  std::vector<double> e(static_cast<size_t>(n));
  for (int64_t row = 0; row < count; ++row) {
    if (!zero[row]) continue;
    for (; candidate < n; ++candidate) {
      std::fill(e.begin(), e.end(), 0.0);
      e[candidate] = 1.0;
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t other = 0; other < count; ++other) {
          if (other == row || (zero[other] && other > row)) continue;
          const double* o = basis + other * n;
          const double c = dot(o, e.data(), n);
          for (int64_t k = 0; k < n; ++k) e[k] -= c * o[k];
        }
      const double norm = std::sqrt(dot(e.data(), e.data(), n));
      if (norm > 0.5) {
        for (int64_t k = 0; k < n; ++k) basis[row * n + k] = e[k] / norm;
        ++candidate;
        break;
      }
    }
  }
}

}  // namespace

template <class T>
int thin_svd_jacobi(const T* M, int64_t n, int64_t r, int max_sweeps, T* left, T* s, T* q) {
  // Columns of M as contiguous rows of W (r x n); Q^T accumulates the rotations (M Q = W^T).
  std::vector<double> W(static_cast<size_t>(r * n)), Qt(static_cast<size_t>(r * r), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < r; ++c) W[c * n + i] = static_cast<double>(M[i * r + c]);
  if (!std::all_of(W.begin(), W.end(), [](double x) { return std::isfinite(x); })) return -1;
  // Scaled by a power of two (exact) to max |M| in [0.5, 1), undone on s, so the squared norms
  // and products below neither overflow nor underflow for any finite M.
  double largest = 0.0;
  for (double x : W) largest = std::max(largest, std::abs(x));
  int exponent = 0;
  std::frexp(largest, &exponent);
  const double scale = std::ldexp(1.0, exponent);
  // A product with 2^-exponent is exact, as ldexp is, and vectorises (ldexp is a libm call per
  // element); 2^-exponent itself is a normal double unless largest is subnormal.
  const double inverse_scale = std::ldexp(1.0, -exponent);
  if (std::isnormal(inverse_scale)) {
    for (double& x : W) x *= inverse_scale;
  } else {
    for (double& x : W) x = std::ldexp(x, -exponent);
  }
  for (int64_t c = 0; c < r; ++c) Qt[c * r + c] = 1.0;
  std::vector<double> norms(static_cast<size_t>(r));
  // Columns below 2^-450 of the largest entry (singular values under 1e-135 of the largest,
  // far below rounding) are zero: their squared norms would underflow the tests below.
  std::vector<double> lengths(static_cast<size_t>(r));
  for (int64_t c = 0; c < r; ++c)
    if (dot(&W[c * n], &W[c * n], n) < kNegligibleSquaredNorm) std::fill_n(&W[c * n], n, 0.0);
  // A pair counts as orthogonal once |a.b| <= tol |a| |b|: LAPACK's gesvj uses sqrt(n) eps. (Not
  // squared: gamma^2 and alpha beta underflow for the tiny columns a converged iterate has.)
  const double tol = std::sqrt(static_cast<double>(n)) * std::numeric_limits<T>::epsilon();
  int sweeps = 0;
  bool converged = false;
  while (!converged && sweeps < max_sweeps) {
    ++sweeps;
    converged = true;
    for (int64_t c = 0; c < r; ++c) {
      norms[c] = dot(&W[c * n], &W[c * n], n);
      lengths[c] = std::sqrt(norms[c]);
    }
    for (int64_t i = 0; i + 1 < r; ++i)
      for (int64_t j = i + 1; j < r; ++j) {
        const double alpha = norms[i], beta = norms[j];
        if (alpha == 0.0 || beta == 0.0) continue;
        const double gamma = dot(&W[i * n], &W[j * n], n);
        if (std::abs(gamma) <= tol * lengths[i] * lengths[j]) continue;
        converged = false;
        // The rotation that zeroes the pair's inner product (the smaller root, |t| <= 1).
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = std::copysign(1.0, zeta) / (std::abs(zeta) + std::sqrt(1.0 + zeta * zeta));
        const double cs = 1.0 / std::sqrt(1.0 + t * t), sn = cs * t;
        rotate(&W[i * n], &W[j * n], n, cs, sn);
        rotate(&Qt[i * r], &Qt[j * r], r, cs, sn);
        norms[i] = std::max(alpha - t * gamma, 0.0);
        norms[j] = beta + t * gamma;
        lengths[i] = std::sqrt(norms[i]);
        lengths[j] = std::sqrt(norms[j]);
      }
  }
  if (!converged) return -1;
  std::vector<double> sigma(static_cast<size_t>(r));
  for (int64_t c = 0; c < r; ++c) sigma[c] = std::sqrt(dot(&W[c * n], &W[c * n], n));
  std::vector<int64_t> order(static_cast<size_t>(r));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sigma[a] > sigma[b]; });
  // The left vectors in the sorted order; zero columns get an orthonormal completion.
  std::vector<double> basis(static_cast<size_t>(r * n));
  std::vector<bool> zero(static_cast<size_t>(r));
  for (int64_t k = 0; k < r; ++k) {
    const int64_t c = order[k];
    zero[k] = !(sigma[c] > 0.0);
    for (int64_t i = 0; i < n; ++i) basis[k * n + i] = zero[k] ? 0.0 : W[c * n + i] / sigma[c];
  }
  if (std::find(zero.begin(), zero.end(), true) != zero.end()) complete_basis(basis.data(), zero, r, n);
  for (int64_t k = 0; k < r; ++k) {
    s[k] = static_cast<T>(sigma[order[k]] * scale);
    for (int64_t i = 0; i < n; ++i) left[i * r + k] = static_cast<T>(basis[k * n + i]);
    for (int64_t i = 0; i < r; ++i) q[i * r + k] = static_cast<T>(Qt[order[k] * r + i]);
  }
  return sweeps;
}

#define LRH_INSTANTIATE_THIN_SVD(T) template int thin_svd_jacobi<T>(const T*, int64_t, int64_t, int, T*, T*, T*);
LRH_INSTANTIATE_THIN_SVD(float)
LRH_INSTANTIATE_THIN_SVD(double)
#undef LRH_INSTANTIATE_THIN_SVD

}  // namespace lowrank_hpc::cpu
