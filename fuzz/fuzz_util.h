// Helpers of the libFuzzer targets (fuzz/*_fuzz.cpp): a private scratch folder for parsers that
// read files, and the repo's source folder for fixtures (the bundled model's tokenizer/config).
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "base/error.h"

namespace hymba::fuzz {

// A folder of this process (in /dev/shm when there is one: no disk I/O per input), removed at exit.
inline const std::string& scratch() {
  static const std::string* dir = [] {  // never destroyed: the exit handler below still uses it
    auto* t = new std::string(std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp");
    *t += "/hymba_fuzz_XXXXXX";
    if (!::mkdtemp(t->data())) std::abort();
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(scratch(), ec); });
    return t;
  }();
  return *dir;
}

// Writes bytes to scratch()/name (not atomically: only this process reads it).
inline std::string put_file(const std::string& name, const void* data, size_t size) {
  const std::string p = scratch() + "/" + name;
  std::FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return p;
}

inline std::string source_dir() { return HYMBA_SOURCE_DIR; }

// A property the parser promised does not hold: a crash libFuzzer reports with the input.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace hymba::fuzz
