// XLA FFI handlers for lowrank_hpc.jax: the sampled product and the sparse times dense product
// called by XLA itself on the buffers it owns, where a host callback copied them through numpy
// and a Python call (about 2 ms a call at 1e6 entries on the CPU, as much as the kernel; on a GPU
// the arrays went to the host and back). One source for both modules, as the shared bindings:
// in _cpu (each ISA level's) over the OpenMP drivers, in _cuda (LRH_BACKEND_CUDA) over the CUDA
// launchers on XLA's stream. The CPU modules add kernel_product's top-k (row and global) over the
// host BLAS's tiles. Compiled only where the build found jaxlib's FFI headers
// (CMakeLists.txt: LOWRANK_HPC_JAX_FFI). Shapes, dtypes and flags are checked by lowrank_hpc.jax
// before the call; each index is range-checked by the kernels and a bad one comes back as the
// error lowrank_hpc.ops raises (on a GPU that needs the status words: a wait for the stream or two).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if !defined(LRH_BACKEND_CUDA) && defined(__linux__)
#include <sys/mman.h>
#endif

#include <pybind11/stl.h>

#include "../common/backend.hpp"
#ifdef LRH_BACKEND_CUDA
#include "lowrank_hpc_cuda/stream_memory.hpp"
#endif

namespace lowrank_hpc::bindings {

namespace {

namespace ffi = xla::ffi;

// A CUDA call that failed (the CPU drivers never do), reported as XLA's internal error.
struct LaunchFailed {
  int code;
  const char* what;
};

#ifdef LRH_BACKEND_CUDA
constexpr int kCudaOutOfMemory = 2;  // cudaErrorMemoryAllocation (the bindings see no CUDA headers)
#endif

void check(int code, const char* what) {
  if (code != 0) throw LaunchFailed{code, what};
}

// Where XLA runs the handler: nothing more on the host; on a GPU its stream, its device and its
// scratch allocator (the handler's buffers from XLA's own pool, which jax preallocates; the
// device sort inside coo_to_csr still takes its temporaries from CUDA's stream-ordered pool).
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

  // count elements, uninitialised (every one is written before it is read). After rewind() the
  // same sequence of requests gets the same blocks again.
  template <class T>
  T* allocate(int64_t count) {
    const size_t bytes = sizeof(T) * static_cast<size_t>(count > 0 ? count : 1);
    if (cursor_ < blocks_.size() && blocks_[cursor_].bytes >= bytes) return static_cast<T*>(blocks_[cursor_++].data);
#ifdef LRH_BACKEND_CUDA
    const std::optional<void*> allocated = placement_.scratch->Allocate(bytes, 256);
    if (!allocated.has_value() || *allocated == nullptr) throw std::bad_alloc();
    void* data = *allocated;
#else
    std::unique_ptr<void, Free> owned(host_allocate(bytes));
    void* data = owned.get();
    host_.push_back(std::move(owned));
#endif
    if (cursor_ < blocks_.size())
      blocks_[cursor_] = {data, bytes};  // a larger request than last time (the smaller block stays owned)
    else
      blocks_.push_back({data, bytes});
    ++cursor_;
    return static_cast<T*>(data);
  }

  // The blocks handed out so far may be handed out again: the vmapped elements run one after
  // another (each ending with a read of its status words, so nothing queued still uses them),
  // and their scratch must not grow with their number.
  void rewind() { cursor_ = 0; }

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
  struct Block {
    void* data;
    size_t bytes;
  };
  Placement placement_;
  std::vector<Block> blocks_;
  size_t cursor_ = 0;
#ifdef LRH_BACKEND_CUDA
  int previous_device_ = 0;
#else
  // Blocks of 4 MiB or more on whole 2 MiB pages, advised to be huge ones as numpy's arrays
  // are: their first touch (top-k's 64 MiB block, every call) took 60 ms in 4 KiB pages on a
  // 2-core VM, 11 ms in huge ones.
  static void* host_allocate(size_t bytes) {
    constexpr size_t kHugePage = size_t(2) << 20;
    void* data = nullptr;
    if (bytes >= 2 * kHugePage) {
      data = std::aligned_alloc(kHugePage, (bytes + kHugePage - 1) / kHugePage * kHugePage);
#ifdef MADV_HUGEPAGE
      if (data != nullptr) madvise(data, bytes, MADV_HUGEPAGE);  // a hint: refused, the pages stay small
#endif
    } else {
      data = std::malloc(bytes);
    }
    if (data == nullptr) throw std::bad_alloc();
    return data;
  }
  struct Free {
    void operator()(void* data) const { std::free(data); }
  };
  std::vector<std::unique_ptr<void, Free>> host_;
#endif
};

// An index array as the errors name it: its argument name, its values and their bound.
template <class I>
struct Indices {
  const char* name;
  const I* values;
  int64_t bound;
};

// The problems of one kernel call, for its offsets and its errors: `batch` problems holding
// `entries` in all, each vmapped element's `per_element` of them, the first element `first`
// (of `elements` in the call; an error names its element when there are several).
struct Problems {
  int64_t batch;
  int64_t entries;
  int64_t per_element;
  int64_t first;
  int64_t elements;

  std::string position(int64_t k) const {
    if (elements <= 1) return "[" + std::to_string(k) + "]";
    return "[" + std::to_string(k % per_element) + "] (vmapped element " + std::to_string(first + k / per_element) +
           ")";
  }

  std::vector<int64_t> offsets() const {
    std::vector<int64_t> bounds(static_cast<size_t>(batch) + 1);
    for (int64_t b = 0; b <= batch; ++b) bounds[static_cast<size_t>(b)] = b * (entries / batch);
    return bounds;
  }
};

int64_t dimension_from_end(const ffi::AnyBuffer& buffer, size_t from_end) {
  const auto dims = buffer.dimensions();
  return dims[dims.size() - from_end];
}

// vmap's leading dimensions (vmap_method "expand_dims"): the result's are the vmapped elements;
// an operand not batched along a vmapped axis has 1 there and is shared along it (read in place:
// "broadcast_all" made XLA copy a shared factor once per element).
class Stacking {
 public:
  Stacking(const ffi::AnyBuffer& result, size_t inner) {
    const auto dims = result.dimensions();
    shape_.assign(dims.begin(), dims.end() - static_cast<std::ptrdiff_t>(inner));
  }

  int64_t elements() const {
    int64_t count = 1;
    for (int64_t d : shape_) count *= d;
    return count;
  }

  // Whether x holds an operand for every element (then the elements are one batch in x's order).
  bool stacked(const ffi::AnyBuffer& x) const {
    const auto dims = x.dimensions();
    return std::equal(shape_.begin(), shape_.end(), dims.begin());
  }

  // Whether every element reads the same operand x.
  bool shared(const ffi::AnyBuffer& x) const {
    const auto dims = x.dimensions();
    return std::all_of(dims.begin(), dims.begin() + static_cast<std::ptrdiff_t>(shape_.size()),
                       [](int64_t d) { return d == 1; });
  }

  // The operand of x that element e reads (e row-major over the result's leading dimensions).
  int64_t operand(const ffi::AnyBuffer& x, int64_t e) const {
    const auto dims = x.dimensions();
    int64_t index = 0, stride = 1;
    for (size_t d = shape_.size(); d-- > 0;) {
      const int64_t position = e % shape_[d];
      e /= shape_[d];
      if (dims[d] != 1) index += position * stride;
      stride *= dims[d];
    }
    return index;
  }

 private:
  std::vector<int64_t> shape_;
};

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
ffi::Error dispatch_types(const char* function, const char* values_name, ffi::DataType values, ffi::DataType indices,
                          Body&& body) {
  auto with_index = [&](auto t) -> ffi::Error {
    if (indices == ffi::DataType::S32) return body(t, int32_t{});
    if (indices == ffi::DataType::S64) return body(t, int64_t{});
    return ffi::Error::InvalidArgument(std::string(function) + ": rows and cols must be int32 or int64");
  };
  switch (values) {
    case ffi::DataType::F32: return with_index(float{});
    case ffi::DataType::F64: return with_index(double{});
    case ffi::DataType::F16: return with_index(float16{});
    case ffi::DataType::BF16: return with_index(bfloat16{});
    default:
      return ffi::Error::InvalidArgument(std::string(function) + ": " + values_name +
                                         " must be float32, float64, float16 or bfloat16");
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
    if (failure.code == kCudaOutOfMemory)
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        std::string(function) + ": " + failure.what + ": " + reason);
#else
    const std::string reason = "code " + std::to_string(failure.code);
#endif
    return ffi::Error::Internal(std::string(function) + ": " + failure.what + " failed: " + reason);
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string(function) + ": " + error.what());
  }
}

// out (..., nnz) = <U[rows[k]], V[cols[k]]> for U (..., m, r), V (..., n, r), rows and cols
// (..., nnz); leading dimensions are vmap's (Stacking). One kernel call where every operand is
// stacked (the elements as the kernels' batch) or the factors are shared (the elements' entries as
// one problem), else one call per element on its operands in place. row_order (float32/float64
// on the CPU, decided by lowrank_hpc.ops' sort_pays): sort by row first and read
// each U row once per row, as ops.sampled_product does; the GPU runs the coordinate kernel.
ffi::Error sampled_product(const Placement& placement, ffi::AnyBuffer U, ffi::AnyBuffer V, ffi::AnyBuffer rows,
                           ffi::AnyBuffer cols, ffi::Result<ffi::AnyBuffer> out, bool row_order) {
  constexpr const char* function = "sampled_product";
  const int64_t m = dimension_from_end(U, 2), r = dimension_from_end(U, 1), n = dimension_from_end(V, 2);
  const int64_t per_element = dimension_from_end(*out, 1);
  const Stacking stacking(*out, 1);
  const int64_t elements = stacking.elements();
  if (per_element == 0 || elements == 0) return ffi::Error::Success();
  return guarded(function, placement, [&](Workspace& workspace) {
    return dispatch_types(function, "U", U.element_type(), rows.element_type(), [&](auto t, auto i) -> ffi::Error {
      using T = decltype(t);
      using I = decltype(i);
      // The products of `problems` whose factors start at U_, V_ and entries at rows_, cols_.
      auto run = [&](const Problems& problems, const T* U_, const T* V_, const I* rows_, const I* cols_,
                     T* out_) -> ffi::Error {
        const int64_t batch = problems.batch, nnz = problems.entries;
        const std::vector<int64_t> bounds = problems.offsets();
        const int64_t* offsets = workspace.upload(bounds.data(), bounds.size());
#ifdef LRH_BACKEND_CUDA
        (void)row_order;  // the CPU's choice: a thread group per entry gains nothing from the row order
#else
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
          if (row_order) {
            const int64_t bad =
                cpu::sampled_product_in_row_order<T, I>(U_, V_, rows_, cols_, offsets, batch, m, n, r, nnz, out_);
            if (bad >= 0)
              return index_error<I>(workspace, function, problems, bad, {{"rows", rows_, m}, {"cols", cols_, n}});
            return ffi::Error::Success();
          }
        }
#endif
        int64_t* first_bad = workspace.upload<int64_t>({nnz});
        check(launch::sampled_product<T, I>(U_, V_, rows_, cols_, offsets, batch, m, n, r, nnz, out_, first_bad,
                                            workspace.stream()),
              "sampled_product");
        const int64_t bad = workspace.read(first_bad);
        if (bad < nnz)
          return index_error<I>(workspace, function, problems, bad, {{"rows", rows_, m}, {"cols", cols_, n}});
        return ffi::Error::Success();
      };
      const T* U0 = U.reinterpret_data<T>();
      const T* V0 = V.reinterpret_data<T>();
      const I* rows0 = rows.reinterpret_data<I>();
      const I* cols0 = cols.reinterpret_data<I>();
      T* out0 = out->reinterpret_data<T>();
      const int64_t entries = elements * per_element;
      if (stacking.stacked(rows) && stacking.stacked(cols)) {
        if (stacking.stacked(U) && stacking.stacked(V))
          return run({elements, entries, per_element, 0, elements}, U0, V0, rows0, cols0, out0);
        if (stacking.shared(U) && stacking.shared(V))
          return run({1, entries, per_element, 0, elements}, U0, V0, rows0, cols0, out0);
      }
      for (int64_t e = 0; e < elements; ++e) {
        workspace.rewind();
        const ffi::Error error = run({1, per_element, per_element, e, elements}, U0 + stacking.operand(U, e) * m * r,
                                     V0 + stacking.operand(V, e) * n * r,
                                     rows0 + stacking.operand(rows, e) * per_element,
                                     cols0 + stacking.operand(cols, e) * per_element, out0 + e * per_element);
        if (error.failure()) return error;
      }
      return ffi::Error::Success();
    });
  });
}

// out (..., n_rows, r) = S @ B for S with vals[k] at (rows[k], cols[k]) and B (..., k, r), or
// S^T @ B with transpose; rows, cols, vals (..., nnz); leading dimensions are vmap's (Stacking):
// one kernel call where every operand is stacked, else one per element on its operands in place.
// One sort into CSR order moving indices and values, then one streaming pass, or on the CPU
// the in-place product where it pays, as ops.sparse_times_dense does (repeats add up, each row
// summed in input order).
ffi::Error sparse_times_dense(const Placement& placement, ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer vals,
                              ffi::AnyBuffer B, ffi::Result<ffi::AnyBuffer> out, bool transpose) {
  constexpr const char* function = "sparse_times_dense";
  const int64_t n_rows = dimension_from_end(*out, 2), n_other = dimension_from_end(B, 2);
  const int64_t r = dimension_from_end(B, 1);
  const int64_t per_element = dimension_from_end(rows, 1);
  const Stacking stacking(*out, 2);
  const int64_t elements = stacking.elements();
  return guarded(function, placement, [&](Workspace& workspace) {
    if (per_element == 0 || elements == 0) {
      workspace.zero(out->untyped_data(), out->size_bytes());
      return ffi::Error::Success();
    }
    return dispatch_types(function, "vals", vals.element_type(), rows.element_type(),
                          [&](auto t, auto i) -> ffi::Error {
      using T = decltype(t);
      using I = decltype(i);
      // The products of `problems` whose entries start at rows_, cols_, vals_ and dense operands at B_.
      auto run = [&](const Problems& problems, const I* rows_, const I* cols_, const T* vals_, const T* B_,
                     T* out_) -> ffi::Error {
        const int64_t batch = problems.batch, nnz = problems.entries;
        const I* keys = transpose ? cols_ : rows_;
        const I* others = transpose ? rows_ : cols_;
        const Indices<I> key_indices{transpose ? "cols" : "rows", keys, n_rows};
        const char* other_name = transpose ? "rows" : "cols";
#ifndef LRH_BACKEND_CUDA
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
          // Shuffled entries of narrow rank into a small result: in place, as ops.sparse_times_dense
          int64_t bad[2];
          if (batch == 1 && cpu::coo_times_dense_in_place<T, I>(keys, others, vals_, B_, n_rows, n_other, r, nnz,
                                                                out_, bad)) {
            if (bad[0] < nnz) return index_error<I>(workspace, function, problems, bad[0], {key_indices});
            if (bad[1] < nnz)
              return index_error<I>(workspace, function, problems, bad[1], {{other_name, others, n_other}});
            return ffi::Error::Success();
          }
        }
#endif
        const std::vector<int64_t> bounds = problems.offsets();
        const int64_t* offsets = workspace.upload(bounds.data(), bounds.size());
        int64_t* indptr = workspace.allocate<int64_t>(batch * n_rows + 1);
        I* others_sorted = workspace.allocate<I>(nnz);
        T* values_sorted = workspace.allocate<T>(nnz);
        int64_t* status = workspace.upload<int64_t>({nnz, 0});
        check(launch::coo_to_csr<T, I>(keys, others, vals_, offsets, batch, n_rows, nnz, indptr, nullptr,
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
                                            sorted ? vals_ : values_sorted, B_, batch, n_rows, n_other, r, out_,
                                            first_bad, workspace.stream()),
              "csr_times_dense");
        if (workspace.read(first_bad) < nnz) {  // an entry in CSR order: name the input's first bad one
          const int64_t k = workspace.first_out_of_range(others, nnz, n_other);
          return index_error<I>(workspace, function, problems, k < 0 ? 0 : k, {{other_name, others, n_other}});
        }
        return ffi::Error::Success();
      };
      const I* rows0 = rows.reinterpret_data<I>();
      const I* cols0 = cols.reinterpret_data<I>();
      const T* vals0 = vals.reinterpret_data<T>();
      const T* B0 = B.reinterpret_data<T>();
      T* out0 = out->reinterpret_data<T>();
      if (stacking.stacked(rows) && stacking.stacked(cols) && stacking.stacked(vals) && stacking.stacked(B))
        return run({elements, elements * per_element, per_element, 0, elements}, rows0, cols0, vals0, B0, out0);
      for (int64_t e = 0; e < elements; ++e) {
        workspace.rewind();
        const ffi::Error error = run({1, per_element, per_element, e, elements},
                                     rows0 + stacking.operand(rows, e) * per_element,
                                     cols0 + stacking.operand(cols, e) * per_element,
                                     vals0 + stacking.operand(vals, e) * per_element,
                                     B0 + stacking.operand(B, e) * n_other * r, out0 + e * n_rows * r);
        if (error.failure()) return error;
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

// The top-k of kernel_product on the host: f(U V^T) for U (..., m, r), V (..., n, r) of float32
// or float64, its row tiles formed in each OpenMP thread by the host GEMM (SciPy's, whose address
// lowrank_hpc.jax hands over once through configure_top_k: no address in the program XLA
// compiles, so an exported one runs in another process); leading dimensions are vmap's
// (Stacking). One kernel call where both factors are stacked (the elements as the kernels'
// batch) or, in row mode, U stacked and V shared (the elements' rows as one matrix's), else one
// per element on its factors in place. int32 indices (JAX without x64 has none wider; m * n <
// 2^31, checked by lowrank_hpc.jax). NaN/inf among the f values: the error `overflow` with its
// "{count}" filled in (ops.kernel_product's FloatingPointError text, written there once).
// One handler call's GEMM, kernel function, overflow text and its factors' and values' data.
template <class T>
struct TopKCall {
  using Value = T;
  cpu::HostGemm<T> gemm;
  ops::KernelFunction f;
  std::string_view overflow;
  const T* U;
  const T* V;
  T* values;
};

// What jax_ffi_configure_top_k set: the GEMMs' addresses and the OpenBLAS thread controls.
struct TopKHost {
  std::mutex lock;
  uintptr_t sgemm = 0, dgemm = 0;
  std::vector<std::pair<void (*)(int), int (*)()>> blas_threads;
  // The single-threaded scope's depth over the handlers running now, and the counts to put back.
  int depth = 0;
  std::vector<int> saved;
};

TopKHost& top_k_host() {
  static TopKHost host;
  return host;
}

template <class T>
cpu::HostGemm<T> configured_gemm() {
  TopKHost& host = top_k_host();
  const std::lock_guard<std::mutex> guard(host.lock);
  return reinterpret_cast<cpu::HostGemm<T>>(std::is_same_v<T, float> ? host.sgemm : host.dgemm);
}

// One BLAS thread while any top-k handler runs, each OpenBLAS's count put back when the last one
// ends (a count shared by the handlers: each saving and restoring its own left it at 1 where two
// overlapped): the scope lowrank_hpc.ops opens around the same tiles (single_threaded_blas). With
// the BLAS's own threads splitting a tile's GEMM, the numbers came an ulp from ops' (and ran beside
// the OpenMP threads that call it).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    TopKHost& host = top_k_host();
    const std::lock_guard<std::mutex> guard(host.lock);
    if (host.depth == 0) {
      host.saved.assign(host.blas_threads.size(), 0);  // the only step that may throw: nothing set yet
      for (size_t i = 0; i < host.blas_threads.size(); ++i) host.saved[i] = host.blas_threads[i].second();
      for (const auto& [set, get] : host.blas_threads) set(1);
    }
    ++host.depth;
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;
  ~SingleThreadedBlas() {
    TopKHost& host = top_k_host();
    const std::lock_guard<std::mutex> guard(host.lock);
    if (--host.depth > 0) return;
    for (size_t i = 0; i < host.saved.size(); ++i) host.blas_threads[i].first(host.saved[i]);
  }
};

template <class Body>
ffi::Error top_k(const char* function, ffi::AnyBuffer U, ffi::AnyBuffer V, ffi::AnyBuffer& values,
                 const Stacking& stacking, int64_t kernel, std::string_view overflow, Body&& body) {
  if (kernel < 0 || kernel > static_cast<int64_t>(ops::KernelFunction::piecewise_linear))
    return ffi::Error::InvalidArgument(std::string(function) + ": unknown kernel function code " +
                                       std::to_string(kernel));
  if (stacking.elements() == 0) return ffi::Error::Success();
  return guarded(function, Placement{}, [&](Workspace& workspace) -> ffi::Error {
    auto run = [&](auto t) -> ffi::Error {
      using T = decltype(t);
      const cpu::HostGemm<T> gemm = configured_gemm<T>();
      if (gemm == nullptr)
        return ffi::Error::InvalidArgument(std::string(function) + ": no host GEMM (lowrank_hpc.jax configures it "
                                           "where SciPy's BLAS is found)");
      const SingleThreadedBlas single_threaded;
      return body(workspace, TopKCall<T>{gemm, static_cast<ops::KernelFunction>(kernel), overflow,
                                         U.reinterpret_data<T>(), V.reinterpret_data<T>(),
                                         values.reinterpret_data<T>()});
    };
    switch (U.element_type()) {
      case ffi::DataType::F32: return run(float{});
      case ffi::DataType::F64: return run(double{});
      default: return ffi::Error::InvalidArgument(std::string(function) + ": U must be float32 or float64");
    }
  });
}

ffi::Error overflowed(std::string_view overflow, int64_t count) {
  std::string message(overflow);
  const std::string marker = "{count}";
  const size_t at = message.find(marker);
  if (at != std::string::npos) message.replace(at, marker.size(), std::to_string(count));
  return ffi::Error::InvalidArgument(message);
}

// values, indices (..., m, k): each row's k largest |f| (ties to the smaller column), best first
// or by ascending column.
ffi::Error top_k_rows_on_host(ffi::AnyBuffer U, ffi::AnyBuffer V, ffi::Result<ffi::AnyBuffer> values,
                              ffi::Result<ffi::AnyBuffer> indices, int64_t kernel, bool by_magnitude,
                              std::string_view overflow) {
  const Stacking stacking(*values, 2);
  const int64_t m = dimension_from_end(U, 2), r = dimension_from_end(U, 1), n = dimension_from_end(V, 2);
  const int64_t k = dimension_from_end(*values, 1), elements = stacking.elements();
  return top_k("kernel_product", U, V, *values, stacking, kernel, overflow,
               [&](Workspace& workspace, const auto& call) -> ffi::Error {
    using T = typename std::decay_t<decltype(call)>::Value;
    int64_t* selected = workspace.allocate<int64_t>(elements * m * k);
    int64_t bad = 0;
    if (stacking.stacked(U) && stacking.stacked(V)) {
      bad = cpu::kernel_topk_rows_of_products<T>(call.gemm, call.U, call.V, elements, m, n, r, call.f, k,
                                                 call.values, selected);
    } else if (stacking.stacked(U) && stacking.shared(V)) {  // the elements' rows are one matrix's rows
      bad = cpu::kernel_topk_rows_of_products<T>(call.gemm, call.U, call.V, 1, elements * m, n, r, call.f, k,
                                                 call.values, selected);
    } else {
      for (int64_t e = 0; e < elements; ++e)  // every element's count, as a batched call gives it
        bad += cpu::kernel_topk_rows_of_products<T>(call.gemm, call.U + stacking.operand(U, e) * m * r,
                                                   call.V + stacking.operand(V, e) * n * r, 1, m, n, r, call.f, k,
                                                   call.values + e * m * k, selected + e * m * k);
    }
    if (bad > 0) return overflowed(call.overflow, bad);
    int32_t* indices0 = indices->reinterpret_data<int32_t>();
    std::vector<int64_t> order(static_cast<size_t>(k));
    std::vector<T> row_values(static_cast<size_t>(k));
    for (int64_t row = 0; row < elements * m; ++row) {
      T* row_values_out = call.values + row * k;
      const int64_t* row_selected = selected + row * k;
      if (!by_magnitude) {  // by ascending column (distinct within a row: no tie to break)
        for (int64_t i = 0; i < k; ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return row_selected[a] < row_selected[b]; });
        std::copy(row_values_out, row_values_out + k, row_values.begin());
        for (int64_t i = 0; i < k; ++i) {
          row_values_out[i] = row_values[order[i]];
          indices0[row * k + i] = static_cast<int32_t>(row_selected[order[i]]);
        }
      } else {
        for (int64_t i = 0; i < k; ++i) indices0[row * k + i] = static_cast<int32_t>(row_selected[i]);
      }
    }
    return ffi::Error::Success();
  });
}

// values, rows, cols (..., k): each element's k largest |f| over all of f(U V^T) (ties to the
// smaller flat index), best first or in row-major order, in blocks of block_rows rows.
ffi::Error top_k_global_on_host(ffi::AnyBuffer U, ffi::AnyBuffer V, ffi::Result<ffi::AnyBuffer> values,
                                ffi::Result<ffi::AnyBuffer> rows, ffi::Result<ffi::AnyBuffer> cols, int64_t kernel,
                                bool by_magnitude, std::string_view overflow, int64_t block_rows) {
  const Stacking stacking(*values, 1);
  const int64_t m = dimension_from_end(U, 2), r = dimension_from_end(U, 1), n = dimension_from_end(V, 2);
  const int64_t k = dimension_from_end(*values, 1), elements = stacking.elements();
  block_rows = std::clamp<int64_t>(block_rows, 1, std::max<int64_t>(m, 1));
  return top_k("kernel_product", U, V, *values, stacking, kernel, overflow,
               [&](Workspace& workspace, const auto& call) -> ffi::Error {
    using T = typename std::decay_t<decltype(call)>::Value;
    T* block = workspace.allocate<T>(block_rows * n);
    int64_t* flat = workspace.allocate<int64_t>(elements * k);
    int64_t bad = 0;
    if (stacking.stacked(U) && stacking.stacked(V)) {
      bad = cpu::kernel_topk_global_of_products<T>(call.gemm, call.U, call.V, elements, m, n, r, call.f, k,
                                                   block_rows, block, by_magnitude, call.values, flat);
    } else {
      for (int64_t e = 0; e < elements; ++e)  // every element's count, as a batched call gives it
        bad += cpu::kernel_topk_global_of_products<T>(call.gemm, call.U + stacking.operand(U, e) * m * r,
                                                      call.V + stacking.operand(V, e) * n * r, 1, m, n, r, call.f, k,
                                                      block_rows, block, by_magnitude, call.values + e * k,
                                                      flat + e * k);
    }
    if (bad > 0) return overflowed(call.overflow, bad);
    int32_t* rows0 = rows->reinterpret_data<int32_t>();
    int32_t* cols0 = cols->reinterpret_data<int32_t>();
    for (int64_t i = 0; i < elements * k; ++i) {
      rows0[i] = static_cast<int32_t>(flat[i] / n);
      cols0[i] = static_cast<int32_t>(flat[i] % n);
    }
    return ffi::Error::Success();
  });
}
#endif

}  // namespace

// Both products bind four arrays, one result and one flag (after the GPU's placement contexts).
#define LRH_FFI_BINDING(flag)                                                                        \
  ffi::Ffi::Bind() LRH_FFI_PLACEMENT.Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>() \
      .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Attr<bool>(flag)

XLA_FFI_DEFINE_HANDLER(sampled_product_handler, LRH_FFI_SAMPLED, LRH_FFI_BINDING("row_order"));
XLA_FFI_DEFINE_HANDLER(sparse_times_dense_handler, LRH_FFI_SPMM, LRH_FFI_BINDING("transpose"));
#ifndef LRH_BACKEND_CUDA
// The top-k handlers' attributes after their buffers (the global one adds block_rows last).
#define LRH_FFI_TOP_K_ATTRIBUTES \
  .Attr<int64_t>("kernel").Attr<bool>("by_magnitude").Attr<std::string_view>("overflow")
XLA_FFI_DEFINE_HANDLER(top_k_rows_handler, top_k_rows_on_host,
                       ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>() LRH_FFI_TOP_K_ATTRIBUTES);
XLA_FFI_DEFINE_HANDLER(top_k_global_handler, top_k_global_on_host,
                       ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() LRH_FFI_TOP_K_ATTRIBUTES
                           .Attr<int64_t>("block_rows"));
#endif

void bind_jax_ffi(py::module_& m) {
  m.def("jax_ffi_handlers", [] {
    py::dict handlers;
    handlers["sampled_product"] = py::capsule(reinterpret_cast<void*>(sampled_product_handler));
    handlers["sparse_times_dense"] = py::capsule(reinterpret_cast<void*>(sparse_times_dense_handler));
#ifndef LRH_BACKEND_CUDA
    handlers["top_k_rows"] = py::capsule(reinterpret_cast<void*>(top_k_rows_handler));
    handlers["top_k_global"] = py::capsule(reinterpret_cast<void*>(top_k_global_handler));
#endif
    return handlers;
  }, "XLA FFI handlers (PyCapsules) of this module's sparse products (and, on the CPU, kernel_product's top-k), "
     "for jax.ffi.register_ffi_target on this module's platform");
#ifndef LRH_BACKEND_CUDA
  m.def("jax_ffi_configure_top_k", [](uintptr_t sgemm, uintptr_t dgemm, const std::vector<uintptr_t>& blas_threads) {
    LRH_EXPECTS(blas_threads.size() % 2 == 0, "blas_threads: (set, get) address pairs, got ", blas_threads.size(),
                " addresses");
    TopKHost& host = top_k_host();
    const std::lock_guard<std::mutex> guard(host.lock);
    LRH_EXPECTS(host.depth == 0, "jax_ffi_configure_top_k: a top-k handler is running");
    host.sgemm = sgemm;
    host.dgemm = dgemm;
    host.blas_threads.clear();
    for (size_t i = 0; i < blas_threads.size(); i += 2)
      host.blas_threads.push_back({reinterpret_cast<void (*)(int)>(blas_threads[i]),
                                   reinterpret_cast<int (*)()>(blas_threads[i + 1])});
  }, py::arg("sgemm"), py::arg("dgemm"), py::arg("blas_threads"),
     "The top-k handlers' host GEMMs (Fortran sgemm/dgemm with 32-bit integers; 0: none, the handler then "
     "refuses) and OpenBLAS thread controls ((openblas_set_num_threads, openblas_get_num_threads) address pairs, "
     "set to one thread while the handlers run).");
#endif
}

}  // namespace lowrank_hpc::bindings
