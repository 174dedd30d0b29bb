// XLA FFI handlers for lowrank_hpc.jax on the CPU: the sampled product and the sparse times
// dense product called by XLA itself on the buffers it owns, where a host callback copied them
// through numpy and a Python call (about 2 ms a call at 1e6 entries, as much as the kernel).
// The same OpenMP drivers as the module's own bindings (whichever ISA level this module is);
// compiled only when the build found jaxlib's FFI headers (CMakeLists.txt: LOWRANK_HPC_JAX_FFI).
// Shapes, dtypes and flags are checked by lowrank_hpc.jax before the call; here each index is
// range-checked by the kernels and a bad one comes back as the error lowrank_hpc.ops raises.
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "xla/ffi/api/ffi.h"

#include "../cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

namespace ffi = xla::ffi;

// Scratch without the zero fill of std::vector (every element is written before it is read).
template <class T>
std::unique_ptr<T[]> scratch(int64_t count) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(count > 0 ? count : 1)]);
}

// The first out-of-range index of entry k among (name, indices, bound), in the words of
// lowrank_hpc.ops' IndexError ("f: rows[k] = v is out of range [0, m)").
template <class I>
ffi::Error index_error(const char* function, int64_t k,
                       std::initializer_list<std::tuple<const char*, const I*, int64_t>> checks) {
  for (const auto& [name, indices, bound] : checks) {
    const int64_t value = static_cast<int64_t>(indices[k]);
    if (value < 0 || value >= bound)
      return ffi::Error::InvalidArgument(std::string(function) + ": " + name + "[" + std::to_string(k) +
                                         "] = " + std::to_string(value) + " is out of range [0, " +
                                         std::to_string(bound) + ")");
  }
  return ffi::Error::InvalidArgument(std::string(function) + ": entry " + std::to_string(k) +
                                     " has an out-of-range index");
}

// body(T{}, I{}) for the value and index buffers' element types (the storage types of
// dispatch_storage_index); anything else is refused (lowrank_hpc.jax never sends it).
template <class Body>
ffi::Error dispatch_types(const char* function, ffi::DataType values, ffi::DataType indices, Body&& body) {
  auto with_index = [&](auto t) -> ffi::Error {
    if (indices == ffi::DataType::S32) return body(t, int32_t{});
    if (indices == ffi::DataType::S64) return body(t, int64_t{});
    return ffi::Error::InvalidArgument(std::string(function) + ": indices must be int32 or int64");
  };
  switch (values) {
    case ffi::DataType::F32: return with_index(float{});
    case ffi::DataType::F64: return with_index(double{});
    case ffi::DataType::F16: return with_index(float16{});
    case ffi::DataType::BF16: return with_index(bfloat16{});
    default: return ffi::Error::InvalidArgument(std::string(function) + ": values must be float32, float64, "
                                                                        "float16 or bfloat16");
  }
}

// Exceptions (std::bad_alloc of the scratch) must not cross XLA's C interface.
template <class Body>
ffi::Error guarded(const char* function, Body&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(function) + ": out of memory for the CSR order's scratch");
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string(function) + ": " + error.what());
  }
}

// out (nnz,) = <U[rows[k]], V[cols[k]]> for U (m, r), V (n, r). row_order (float32/float64
// only, decided by lowrank_hpc.ops' rule for long factor rows): sort by row first and read each
// U row once per row, as ops.sampled_product does.
ffi::Error sampled_product(ffi::AnyBuffer U, ffi::AnyBuffer V, ffi::AnyBuffer rows, ffi::AnyBuffer cols,
                           ffi::Result<ffi::AnyBuffer> out, bool row_order) {
  constexpr const char* function = "sampled_product";
  const int64_t m = U.dimensions()[0], r = U.dimensions()[1], n = V.dimensions()[0];
  const int64_t nnz = static_cast<int64_t>(rows.element_count());
  if (nnz == 0) return ffi::Error::Success();
  return guarded(function, [&] {
    return dispatch_types(function, U.element_type(), rows.element_type(), [&](auto t, auto i) -> ffi::Error {
      using T = decltype(t);
      using I = decltype(i);
      const int64_t offsets[2] = {0, nnz};
      const I* row_index = rows.reinterpret_data<I>();
      const I* col_index = cols.reinterpret_data<I>();
      T* result = out->reinterpret_data<T>();
      if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
        if (row_order) {
          auto indptr = scratch<int64_t>(m + 1);
          auto perm = scratch<int64_t>(nnz);
          auto others = scratch<I>(nnz);
          int64_t status[2] = {nnz, 0};
          launch::coo_to_csr<T, I>(row_index, col_index, nullptr, offsets, 1, m, nnz, indptr.get(), perm.get(),
                                   others.get(), nullptr, status, nullptr);
          if (status[0] < nnz) return index_error<I>(function, status[0], {{"rows", row_index, m}});
          const bool sorted = status[1] != 0;  // then perm and others were not written
          const int64_t bad = cpu::csr_sampled_product<T, I>(
              indptr.get(), sorted ? nullptr : perm.get(), sorted ? col_index : others.get(),
              U.reinterpret_data<T>(), V.reinterpret_data<T>(), nullptr, 1, m, n, r, nnz, result, nullptr);
          if (bad >= 0) return index_error<I>(function, bad, {{"cols", col_index, n}});
          return ffi::Error::Success();
        }
      }
      int64_t first_bad = nnz;
      launch::sampled_product<T, I>(U.reinterpret_data<T>(), V.reinterpret_data<T>(), row_index, col_index, offsets,
                                    1, m, n, r, nnz, result, &first_bad, nullptr);
      if (first_bad < nnz) return index_error<I>(function, first_bad, {{"rows", row_index, m}, {"cols", col_index, n}});
      return ffi::Error::Success();
    });
  });
}

// out (n_rows, r) = S @ B for S with vals[k] at (rows[k], cols[k]) and B (k, r), or S^T @ B
// with transpose: one sort into CSR order moving indices and values, then one streaming pass,
// as ops.sparse_times_dense does (repeats add up, each row summed in input order).
ffi::Error sparse_times_dense(ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer vals, ffi::AnyBuffer B,
                              ffi::Result<ffi::AnyBuffer> out, bool transpose) {
  constexpr const char* function = "sparse_times_dense";
  const int64_t n_rows = out->dimensions()[0], n_other = B.dimensions()[0], r = B.dimensions()[1];
  const int64_t nnz = static_cast<int64_t>(rows.element_count());
  if (nnz == 0) {
    std::memset(out->untyped_data(), 0, out->size_bytes());
    return ffi::Error::Success();
  }
  return guarded(function, [&] {
    return dispatch_types(function, vals.element_type(), rows.element_type(), [&](auto t, auto i) -> ffi::Error {
      using T = decltype(t);
      using I = decltype(i);
      const int64_t offsets[2] = {0, nnz};
      const I* keys = (transpose ? cols : rows).reinterpret_data<I>();
      const I* others = (transpose ? rows : cols).reinterpret_data<I>();
      const char* key_name = transpose ? "cols" : "rows";
      const char* other_name = transpose ? "rows" : "cols";
      const T* values = vals.reinterpret_data<T>();
      auto indptr = scratch<int64_t>(n_rows + 1);
      auto others_sorted = scratch<I>(nnz);
      auto values_sorted = scratch<T>(nnz);
      int64_t status[2] = {nnz, 0};
      launch::coo_to_csr<T, I>(keys, others, values, offsets, 1, n_rows, nnz, indptr.get(), nullptr,
                               others_sorted.get(), values_sorted.get(), status, nullptr);
      if (status[0] < nnz) return index_error<I>(function, status[0], {{key_name, keys, n_rows}});
      const bool sorted = status[1] != 0;  // then nothing moved: the inputs are in CSR order
      int64_t first_bad = nnz;
      launch::csr_times_dense<T, I>(indptr.get(), nullptr, sorted ? others : others_sorted.get(),
                                    sorted ? values : values_sorted.get(), B.reinterpret_data<T>(), 1, n_rows,
                                    n_other, r, out->reinterpret_data<T>(), &first_bad, nullptr);
      if (first_bad < nnz) {  // an entry in CSR order: name the input's first bad one
        for (int64_t k = 0; k < nnz; ++k)
          if (others[k] < 0 || static_cast<int64_t>(others[k]) >= n_other)
            return index_error<I>(function, k, {{other_name, others, n_other}});
      }
      return ffi::Error::Success();
    });
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER(sampled_product_handler, sampled_product,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Attr<bool>("row_order"));

XLA_FFI_DEFINE_HANDLER(sparse_times_dense_handler, sparse_times_dense,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Attr<bool>("transpose"));

void bind_jax_ffi(py::module_& m) {
  m.def("jax_ffi_handlers", [] {
    py::dict handlers;
    handlers["sampled_product"] = py::capsule(reinterpret_cast<void*>(sampled_product_handler));
    handlers["sparse_times_dense"] = py::capsule(reinterpret_cast<void*>(sparse_times_dense_handler));
    return handlers;
  }, "XLA FFI handlers (PyCapsules) of this module's kernels for jax.ffi.register_ffi_target(platform='cpu')");
}

}  // namespace lowrank_hpc::bindings
