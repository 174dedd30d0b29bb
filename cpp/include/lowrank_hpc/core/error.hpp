// Checked preconditions that become Python exceptions (pybind11 maps std::invalid_argument to
// ValueError), never aborts.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace lowrank_hpc {

template <class... Parts>
[[noreturn]] inline void throw_invalid(const char* file, int line, const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  message << " [" << file << ":" << line << "]";
  throw std::invalid_argument(message.str());
}

}  // namespace lowrank_hpc

#define LRH_EXPECTS(cond, ...)                                                   \
  do {                                                                           \
    if (!(cond)) ::lowrank_hpc::throw_invalid(__FILE__, __LINE__, __VA_ARGS__);  \
  } while (0)
