// XLA FFI handlers for lowrank_hpc.jax: the sampled product and the sparse times dense product
// called by XLA itself on the buffers it owns, where a host callback copied them through numpy
// and a Python call (about 2 ms a call at 1e6 entries on the CPU, as much as the kernel; on a GPU
// the arrays went to the host and back). One source for both modules, as the shared bindings:
// in _cpu (each ISA level's) over the OpenMP drivers, in _cuda (LRH_BACKEND_CUDA) over the CUDA
// launchers on XLA's stream. Compiled only where the build found jaxlib's FFI headers
// (CMakeLists.txt: LOWRANK_HPC_JAX_FFI). Shapes, dtypes and flags are checked by lowrank_hpc.jax
// before the call; each index is range-checked by the kernels and a bad one comes back as the
// error lowrank_hpc.ops raises (on a GPU that needs the status word: one wait for the stream).
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

#include "../common/backend.hpp"
#ifdef LRH_BACKEND_CUDA
#include "lowrank_hpc_cuda/stream_memory.hpp"
#endif

namespace lowrank_hpc::bindings {

void bind_jax_ffi(py::module_& m);

namespace {

namespace ffi = xla::ffi;

// A CUDA call that failed (the CPU drivers never do), reported as XLA's internal error.
struct LaunchFailed {
  int code;
  const char* what;
};

void check(int code, const char* what) {
  if (code != 0) throw LaunchFailed{code, what};
}

// Where XLA runs the handler: nothing more on the host; on a GPU its stream, its device and its
// scratch allocator (device memory from XLA's own pool, which jax preallocates).
#ifdef LRH_BACKEND_CUDA
struct Placement {
  void* stream;
  int32_t device;
  ffi::ScratchAllocator* scratch;
};
#else
struct Placement {};
#endif

// The handler's scratch and status words where its kernels run: host memory for the CPU module;
// XLA's scratch on its stream for the CUDA module (with the handler's device current), read back
// after a wait for the stream.
class Workspace {
 public:
  explicit Workspace(const Placement& placement) : placement_(placement) {
#ifdef LRH_BACKEND_CUDA
    check(cuda::select_device(placement_.device, &previous_device_), "cudaSetDevice");
#endif
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() {
#ifdef LRH_BACKEND_CUDA
    // XLA frees the scratch when the handler returns: no queued kernel may still use it (an
    // error path can return before the wait that reads the status words).
    cuda::synchronize(placement_.stream);
    int ignored;
    cuda::select_device(previous_device_, &ignored);
#endif
  }

  void* stream() const {
#ifdef LRH_BACKEND_CUDA
    return placement_.stream;
#else
    return nullptr;
#endif
  }

  // count elements, uninitialised (every one is written before it is read).
  template <class T>
  T* allocate(int64_t count) {
    const size_t bytes = sizeof(T) * static_cast<size_t>(count > 0 ? count : 1);
#ifdef LRH_BACKEND_CUDA
    const std::optional<void*> block = placement_.scratch->Allocate(bytes, 256);
    if (!block.has_value() || *block == nullptr) throw std::bad_alloc();
    return static_cast<T*>(*block);
#else
    host_.emplace_back(new unsigned char[bytes]);  // throws std::bad_alloc
    return reinterpret_cast<T*>(host_.back().get());
#endif
  }

  // A copy of host values where the kernels read them.
  template <class T>
  T* upload(const T* values, size_t count) {
    T* copy = allocate<T>(static_cast<int64_t>(count));
#ifdef LRH_BACKEND_CUDA
    check(cuda::copy_async(copy, values, sizeof(T) * count, stream()), "copy to the device");
#else
    std::memcpy(copy, values, sizeof(T) * count);
#endif
    return copy;
  }
  template <class T>
  T* upload(std::initializer_list<T> values) {
    return upload(values.begin(), values.size());
  }

  // x[k], once the work queued so far is done.
  template <class T>
  T read(const T* x, int64_t k = 0) {
#ifdef LRH_BACKEND_CUDA
    T value;
    check(cuda::copy_async(&value, x + k, sizeof(T), stream()), "copy to the host");
    check(cuda::synchronize(stream()), "stream synchronize");
    return value;
#else
    return x[k];
#endif
  }

  // The first k with x[k] outside [0, bound), or -1 (an error path: one pass over x on the host).
  template <class I>
  int64_t first_out_of_range(const I* x, int64_t count, int64_t bound) {
    const I* host = x;
#ifdef LRH_BACKEND_CUDA
    std::vector<I> copy(static_cast<size_t>(count));
    check(cuda::copy_async(copy.data(), x, sizeof(I) * copy.size(), stream()), "copy to the host");
    check(cuda::synchronize(stream()), "stream synchronize");
    host = copy.data();
#endif
    for (int64_t k = 0; k < count; ++k)
      if (host[k] < 0 || static_cast<int64_t>(host[k]) >= bound) return k;
    return -1;
  }

  void zero(void* x, size_t bytes) {
#ifdef LRH_BACKEND_CUDA
    check(cuda::zero_async(x, bytes, stream()), "memset");
#else
    std::memset(x, 0, bytes);
#endif
  }

 private:
  Placement placement_;
#ifdef LRH_BACKEND_CUDA
  int previous_device_ = 0;
#else
  std::vector<std::unique_ptr<unsigned char[]>> host_;
#endif
};

// An index array as the errors name it: its argument name, its values and their bound.
template <class I>
struct Indices {
  const char* name;
  const I* values;
  int64_t bound;
};

// The problems of one call: a vmapped call (vmap_method "broadcast_all") stacks `batch` problems
// of `per_problem` entries each, which the kernels take as one batch with offsets.
struct Problems {
  int64_t batch;
  int64_t per_problem;

  // Entry k (of all problems) as the caller knows it: "[j]", with the vmapped element when batched.
  std::string position(int64_t k) const {
    if (batch <= 1) return "[" + std::to_string(k) + "]";
    return "[" + std::to_string(k % per_problem) + "] (vmapped element " + std::to_string(k / per_problem) + ")";
  }

  std::vector<int64_t> offsets() const {
    std::vector<int64_t> bounds(static_cast<size_t>(batch) + 1);
    for (int64_t b = 0; b <= batch; ++b) bounds[static_cast<size_t>(b)] = b * per_problem;
    return bounds;
  }
};

// The product of a buffer's leading dimensions: all but its last `inner` ones.
int64_t leading(const ffi::AnyBuffer& buffer, size_t inner) {
  const auto dims = buffer.dimensions();
  int64_t product = 1;
  for (size_t d = 0; d + inner < dims.size(); ++d) product *= dims[d];
  return product;
}

int64_t dimension_from_end(const ffi::AnyBuffer& buffer, size_t from_end) {
  const auto dims = buffer.dimensions();
  return dims[dims.size() - from_end];
}

// Entry k's first out-of-range index among `checked`, in the words of lowrank_hpc.ops' IndexError
// ("f: rows[k] = v is out of range [0, m)").
template <class I>
ffi::Error index_error(Workspace& workspace, const char* function, const Problems& problems, int64_t k,
                       std::initializer_list<Indices<I>> checked) {
  for (const Indices<I>& indices : checked) {
    const int64_t value = static_cast<int64_t>(workspace.read(indices.values, k));
    if (value < 0 || value >= indices.bound)
      return ffi::Error::InvalidArgument(std::string(function) + ": " + indices.name + problems.position(k) +
                                         " = " + std::to_string(value) + " is out of range [0, " +
                                         std::to_string(indices.bound) + ")");
  }
  return ffi::Error::InvalidArgument(std::string(function) + ": entry " + problems.position(k) +
                                     " has an out-of-range index");
}

// body(T{}, I{}) for the value and index buffers' element types (dispatch_storage_index's);
// anything else is refused (lowrank_hpc.jax never sends it).
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
    default:
      return ffi::Error::InvalidArgument(std::string(function) +
                                         ": values must be float32, float64, float16 or bfloat16");
  }
}

// body(workspace) with every exception turned into XLA's error: none may cross its C interface.
template <class Body>
ffi::Error guarded(const char* function, const Placement& placement, Body&& body) {
  try {
    Workspace workspace(placement);
    return body(workspace);
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, std::string(function) + ": out of memory for its scratch");
  } catch (const LaunchFailed& failure) {
#ifdef LRH_BACKEND_CUDA
    const std::string reason = cuda::error_string(failure.code);
#else
    const std::string reason = "code " + std::to_string(failure.code);
#endif
    return ffi::Error::Internal(std::string(function) + ": " + failure.what + " failed: " + reason);
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string(function) + ": " + error.what());
  }
}

// out (..., nnz) = <U[rows[k]], V[cols[k]]> for U (..., m, r), V (..., n, r), rows and cols
// (..., nnz): leading dimensions (vmap's) are a batch of problems in one call. row_order
// (float32/float64 on the CPU, decided by lowrank_hpc.ops' rule for long factor rows): sort by row
// first and read each U row once per row, as ops.sampled_product does; the GPU always runs the
// coordinate kernel.
ffi::Error sampled_product(const Placement& placement, ffi::AnyBuffer U, ffi::AnyBuffer V, ffi::AnyBuffer rows,
                           ffi::AnyBuffer cols, ffi::Result<ffi::AnyBuffer> out, bool row_order) {
  constexpr const char* function = "sampled_product";
  const int64_t m = dimension_from_end(U, 2), r = dimension_from_end(U, 1), n = dimension_from_end(V, 2);
  const int64_t nnz = static_cast<int64_t>(rows.element_count());
  if (nnz == 0) return ffi::Error::Success();
  const Problems problems{leading(U, 2), dimension_from_end(rows, 1)};
  return guarded(function, placement, [&](Workspace& workspace) {
    return dispatch_types(function, U.element_type(), rows.element_type(), [&](auto t, auto i) -> ffi::Error {
      using T = decltype(t);
      using I = decltype(i);
      const I* row_index = rows.reinterpret_data<I>();
      const I* col_index = cols.reinterpret_data<I>();
      T* result = out->reinterpret_data<T>();
      const std::vector<int64_t> bounds = problems.offsets();
      const int64_t* offsets = workspace.upload(bounds.data(), bounds.size());
      const int64_t batch = problems.batch;
#ifdef LRH_BACKEND_CUDA
      (void)row_order;  // the CPU's choice: a thread group per entry gains nothing from the row order
#else
      if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
        if (row_order) {
          int64_t* indptr = workspace.allocate<int64_t>(batch * m + 1);
          int64_t* perm = workspace.allocate<int64_t>(nnz);
          I* others = workspace.allocate<I>(nnz);
          int64_t status[2] = {nnz, 0};
          launch::coo_to_csr<T, I>(row_index, col_index, nullptr, offsets, batch, m, nnz, indptr, perm, others,
                                   nullptr, status, nullptr);
          if (status[0] < nnz)
            return index_error<I>(workspace, function, problems, status[0], {{"rows", row_index, m}});
          const bool sorted = status[1] != 0;  // then perm and others were not written
          const int64_t bad = cpu::csr_sampled_product<T, I>(indptr, sorted ? nullptr : perm,
                                                             sorted ? col_index : others, U.reinterpret_data<T>(),
                                                             V.reinterpret_data<T>(), nullptr, batch, m, n, r, nnz,
                                                             result, nullptr);
          if (bad >= 0) return index_error<I>(workspace, function, problems, bad, {{"cols", col_index, n}});
          return ffi::Error::Success();
        }
      }
#endif
      int64_t* first_bad = workspace.upload<int64_t>({nnz});
      check(launch::sampled_product<T, I>(U.reinterpret_data<T>(), V.reinterpret_data<T>(), row_index, col_index,
                                          offsets, batch, m, n, r, nnz, result, first_bad, workspace.stream()),
            "sampled_product");
      const int64_t bad = workspace.read(first_bad);
      if (bad < nnz)
        return index_error<I>(workspace, function, problems, bad, {{"rows", row_index, m}, {"cols", col_index, n}});
      return ffi::Error::Success();
    });
  });
}

// out (..., n_rows, r) = S @ B for S with vals[k] at (rows[k], cols[k]) and B (..., k, r), or
// S^T @ B with transpose; rows, cols, vals (..., nnz), leading dimensions (vmap's) a batch of
// problems in one call: one sort into CSR order moving indices and values, then one streaming
// pass, as ops.sparse_times_dense does (repeats add up, each row summed in input order).
ffi::Error sparse_times_dense(const Placement& placement, ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer vals,
                              ffi::AnyBuffer B, ffi::Result<ffi::AnyBuffer> out, bool transpose) {
  constexpr const char* function = "sparse_times_dense";
  const int64_t n_rows = dimension_from_end(*out, 2), n_other = dimension_from_end(B, 2);
  const int64_t r = dimension_from_end(B, 1);
  const int64_t nnz = static_cast<int64_t>(rows.element_count());
  const Problems problems{leading(B, 2), dimension_from_end(rows, 1)};
  return guarded(function, placement, [&](Workspace& workspace) {
    if (nnz == 0) {
      workspace.zero(out->untyped_data(), out->size_bytes());
      return ffi::Error::Success();
    }
    return dispatch_types(function, vals.element_type(), rows.element_type(), [&](auto t, auto i) -> ffi::Error {
      using T = decltype(t);
      using I = decltype(i);
      const I* keys = (transpose ? cols : rows).reinterpret_data<I>();
      const I* others = (transpose ? rows : cols).reinterpret_data<I>();
      const Indices<I> key_indices{transpose ? "cols" : "rows", keys, n_rows};
      const char* other_name = transpose ? "rows" : "cols";
      const T* values = vals.reinterpret_data<T>();
      const int64_t batch = problems.batch;
      const std::vector<int64_t> bounds = problems.offsets();
      const int64_t* offsets = workspace.upload(bounds.data(), bounds.size());
      int64_t* indptr = workspace.allocate<int64_t>(batch * n_rows + 1);
      I* others_sorted = workspace.allocate<I>(nnz);
      T* values_sorted = workspace.allocate<T>(nnz);
      int64_t* status = workspace.upload<int64_t>({nnz, 0});
      check(launch::coo_to_csr<T, I>(keys, others, values, offsets, batch, n_rows, nnz, indptr, nullptr,
                                     others_sorted, values_sorted, status, workspace.stream()),
            "coo_to_csr");
      const int64_t bad_key = workspace.read(status);
      if (bad_key < nnz) return index_error<I>(workspace, function, problems, bad_key, {key_indices});
#ifdef LRH_BACKEND_CUDA
      const bool sorted = false;  // the device's sort always moves the entries (status[1] stays 0)
#else
      const bool sorted = status[1] != 0;  // then nothing moved: the inputs are in CSR order
#endif
      int64_t* first_bad = workspace.upload<int64_t>({nnz});
      check(launch::csr_times_dense<T, I>(indptr, nullptr, sorted ? others : others_sorted,
                                          sorted ? values : values_sorted, B.reinterpret_data<T>(), batch, n_rows,
                                          n_other, r, out->reinterpret_data<T>(), first_bad, workspace.stream()),
            "csr_times_dense");
      if (workspace.read(first_bad) < nnz) {  // an entry in CSR order: name the input's first bad one
        const int64_t k = workspace.first_out_of_range(others, nnz, n_other);
        return index_error<I>(workspace, function, problems, k < 0 ? 0 : k, {{other_name, others, n_other}});
      }
      return ffi::Error::Success();
    });
  });
}

#ifdef LRH_BACKEND_CUDA
// XLA's stream (a cudaStream_t, passed on as void*), device and scratch for the CUDA launchers.
ffi::Error sampled_product_on_device(void* stream, int32_t device, ffi::ScratchAllocator scratch, ffi::AnyBuffer U,
                                     ffi::AnyBuffer V, ffi::AnyBuffer rows, ffi::AnyBuffer cols,
                                     ffi::Result<ffi::AnyBuffer> out, bool row_order) {
  return sampled_product(Placement{stream, device, &scratch}, U, V, rows, cols, out, row_order);
}

ffi::Error sparse_times_dense_on_device(void* stream, int32_t device, ffi::ScratchAllocator scratch,
                                        ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer vals,
                                        ffi::AnyBuffer B, ffi::Result<ffi::AnyBuffer> out, bool transpose) {
  return sparse_times_dense(Placement{stream, device, &scratch}, rows, cols, vals, B, out, transpose);
}
#define LRH_FFI_PLACEMENT .Ctx<ffi::PlatformStream<void*>>().Ctx<ffi::DeviceOrdinal>().Ctx<ffi::ScratchAllocator>()
#define LRH_FFI_SAMPLED sampled_product_on_device
#define LRH_FFI_SPMM sparse_times_dense_on_device
#else
ffi::Error sampled_product_on_host(ffi::AnyBuffer U, ffi::AnyBuffer V, ffi::AnyBuffer rows, ffi::AnyBuffer cols,
                                   ffi::Result<ffi::AnyBuffer> out, bool row_order) {
  return sampled_product(Placement{}, U, V, rows, cols, out, row_order);
}

ffi::Error sparse_times_dense_on_host(ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer vals, ffi::AnyBuffer B,
                                      ffi::Result<ffi::AnyBuffer> out, bool transpose) {
  return sparse_times_dense(Placement{}, rows, cols, vals, B, out, transpose);
}
#define LRH_FFI_PLACEMENT
#define LRH_FFI_SAMPLED sampled_product_on_host
#define LRH_FFI_SPMM sparse_times_dense_on_host
#endif

}  // namespace

// Both products bind four arrays, one result and one flag (after the GPU's placement contexts).
#define LRH_FFI_BINDING(flag)                                                                        \
  ffi::Ffi::Bind() LRH_FFI_PLACEMENT.Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>() \
      .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Attr<bool>(flag)

XLA_FFI_DEFINE_HANDLER(sampled_product_handler, LRH_FFI_SAMPLED, LRH_FFI_BINDING("row_order"));
XLA_FFI_DEFINE_HANDLER(sparse_times_dense_handler, LRH_FFI_SPMM, LRH_FFI_BINDING("transpose"));

void bind_jax_ffi(py::module_& m) {
  m.def("jax_ffi_handlers", [] {
    py::dict handlers;
    handlers["sampled_product"] = py::capsule(reinterpret_cast<void*>(sampled_product_handler));
    handlers["sparse_times_dense"] = py::capsule(reinterpret_cast<void*>(sparse_times_dense_handler));
    return handlers;
  }, "XLA FFI handlers (PyCapsules) of this module's sparse products, for jax.ffi.register_ffi_target on this "
     "module's platform");
}

}  // namespace lowrank_hpc::bindings
