#include "eval/plot.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace hymba {

std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

bool gnuplot_png(const std::string& png, const std::string& body, int width, int height) {
  namespace fs = std::filesystem;
  const std::string tmp = png + ".tmp", script = png + ".gp";
  {
    std::ofstream gp(script);
    if (!gp) return false;
    gp << "set terminal pngcairo size " << width << "," << height << " noenhanced\nset output " << gp_quote(tmp) << "\n"
       << body << "\n";
  }
  const std::string cmd = "gnuplot " + gp_quote(script) + " >/dev/null 2>&1";
  const bool ok = std::system(cmd.c_str()) == 0 && fs::exists(tmp);
  std::error_code ec;
  if (ok) fs::rename(tmp, png, ec);
  fs::remove(tmp, ec);
  fs::remove(script, ec);
  return ok && fs::exists(png);
}

}  // namespace hymba
