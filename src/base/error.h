// Errors: library code throws hymba::Error with a message that names the file, key or tensor;
// the CLI turns it into one line on stderr and a non-zero exit.
#pragma once
#include <stdexcept>
#include <string>

namespace hymba {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }

}  // namespace hymba

#define HYMBA_CHECK(cond, msg)                         \
  do {                                                 \
    if (!(cond)) ::hymba::fail(std::string() + (msg)); \
  } while (0)
