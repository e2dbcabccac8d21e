// Subcommands of the `hymba` CLI register themselves (one file each), like git's builtins:
//   static hymba::cli::Register reg("generate", "Generate text", [](CLI::App& sub) { ... });
// `setup` adds the options and sets sub.callback(); options must outlive parsing, so keep them
// in a std::shared_ptr captured by the callback. Throw hymba::Error for bad input: main() prints
// "hymba: error: <message>" and exits 1.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace hymba::cli {

struct Command {
  std::string name, help;
  std::function<void(CLI::App&)> setup;
};

std::vector<Command>& registry();

struct Register {
  Register(std::string name, std::string help, std::function<void(CLI::App&)> setup) {
    registry().push_back({std::move(name), std::move(help), std::move(setup)});
  }
};

}  // namespace hymba::cli
