// PNG figures through gnuplot (Debian's gnuplot-nox / gnuplot), as `hymba train` draws its loss.
#pragma once
#include <string>

namespace hymba {

// Runs a gnuplot script that draws one PNG: `body` gets "set terminal pngcairo …" and
// "set output …" prepended, the picture is written to a temp file and renamed to `png`, so a
// failed run leaves no half-written figure. Returns false (and writes nothing) if gnuplot is
// missing or fails: figures are optional, the JSON numbers are the record.
bool gnuplot_png(const std::string& png, const std::string& body, int width = 900, int height = 560);

// Quotes a string for a gnuplot script ('...' with '' for ').
std::string gp_quote(const std::string& s);

}  // namespace hymba
