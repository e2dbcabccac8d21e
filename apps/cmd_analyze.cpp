// hymba analyze: what the heads of a model do on a text (src/eval/analyze.h): attention maps with
// their mask, Meta/BOS/Self/Cross shares, entropies with and without meta tokens, branch
// magnitudes and fusion weights, the loss without each layer's attention or SSM branch.
// Writes OUT/analysis.json and PNG figures (gnuplot).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "eval/analyze.h"
#include "eval/lm_eval.h"
#include "eval/plot.h"
#include "io/files.h"
#include "model/weights.h"
#include "runtime/tokenizer.h"

namespace hymba::cli {
namespace {

using namespace hymba::analysis;

struct Opts : ModelFlags {
  std::string text, out = "analysis", layers, heads = "0";
  int64_t max_tokens = 128;
};

std::vector<int> parse_list(const std::string& s, const char* flag) {
  std::vector<int> v;
  for (const std::string& t : lmeval::split(s, ',')) {
    char* end = nullptr;
    const long x = std::strtol(t.c_str(), &end, 10);
    HYMBA_CHECK(!t.empty() && end && *end == 0 && x >= 0 && x < 1000000, std::string(flag) + ": '" + t + "' is not an index >= 0");
    v.push_back(int(x));
  }
  return v;
}

const char* kCat[4] = {"Meta", "BOS", "Self", "Cross"};

nlohmann::json shares(const std::array<double, 4>& s) {
  nlohmann::json j;
  for (int k = 0; k < 4; ++k) j[kCat[k]] = s[size_t(k)];
  return j;
}

void plot_map(const Map& m, const std::string& png, const std::string& title) {
  std::string data;
  for (int64_t i = 0; i < m.T; ++i) {
    for (int64_t j = 0; j < m.T; ++j) {
      const size_t k = size_t(i * m.T + j);
      data += std::to_string(j) + " " + std::to_string(i) + " " +
              (m.visible[k] ? std::to_string(std::log10(std::max(m.p[k], 1e-6))) : std::string("NaN")) + "\n";
    }
    data += "\n";
  }
  const std::string T = std::to_string(m.T), Mb = std::to_string(double(m.M) - 0.5);
  std::string body = "$d << EOD\n" + data + "EOD\nset title " + gp_quote(title) +
                     "\nset xlabel 'key position'\nset ylabel 'query position'\nset xrange [-0.5:" + T + "-0.5]\nset yrange [" + T +
                     "-0.5:-0.5]\nset cbrange [-6:0]\nset cblabel 'log10 p (grey: masked)'\nset size ratio -1\n"
                     "set object 1 rectangle from graph 0,0 to graph 1,1 behind fillcolor rgb '#d0d0d0' fillstyle solid noborder\n";
  if (m.M > 0)
    body += "set arrow from " + Mb + ", graph 0 to " + Mb + ", graph 1 nohead lc rgb 'white' dt 2\nset label 'meta | text' at " + Mb +
            ", graph 1.02 center\n";
  body += "plot $d using 1:2:3 with image notitle";
  gnuplot_png(png, body, 760, 700);
}

void plot_figures(const Report& r, const std::string& out, const std::string& model) {
  std::string cat, ent, mag, imp;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const auto& s = r.layers[l];
    char b[512];
    std::snprintf(b, sizeof b, "%zu %g %g %g %g %g %g %g %g\n", l, s.attn_share[0], s.attn_share[1], s.attn_share[2],
                  s.attn_share[3], s.ssm_share[0], s.ssm_share[1], s.ssm_share[2], s.ssm_share[3]);
    cat += b;
    std::snprintf(b, sizeof b, "%zu %s %s %s %s\n", l, s.attn ? std::to_string(s.attn_entropy).c_str() : "NaN",
                  s.attn ? std::to_string(s.attn_entropy_nometa).c_str() : "NaN", s.ssm ? std::to_string(s.ssm_entropy).c_str() : "NaN",
                  s.ssm ? std::to_string(s.ssm_entropy_nometa).c_str() : "NaN");
    ent += b;
    std::snprintf(b, sizeof b, "%zu %g %g %g %g\n", l, s.attn_out, s.ssm_out, s.fusion_w_attn, s.fusion_w_ssm);
    mag += b;
    std::snprintf(b, sizeof b, "%zu %g %g\n", l, s.attn && s.ssm ? s.loss_without_attn - r.loss : 0.0,
                  s.attn && s.ssm ? s.loss_without_ssm - r.loss : 0.0);
    imp += b;
  }
  const std::string head = "set datafile missing 'NaN'\nset grid ytics\nset xlabel 'layer'\nset key outside right\n";
  gnuplot_png(out + "/categories.png",
              "$d << EOD\n" + cat + "EOD\n" + head +
                  "set style data histograms\nset style histogram rowstacked\nset style fill solid 0.9 border -1\nset boxwidth 0.8\n"
                  "set yrange [0:1]\nset ylabel 'share of attention mass'\nset multiplot layout 1,2 title " +
                  gp_quote("Attention mass by category (Fig. 8): " + model) +
                  "\nset title 'attention heads'\nplot $d using 2:xtic(1) title 'Meta', '' using 3 title 'BOS', '' using 4 title 'Self', "
                  "'' using 5 title 'Cross'\nset title 'SSM heads (implicit attention)'\nplot $d using 6:xtic(1) title 'Meta', '' using 7 "
                  "title 'BOS', '' using 8 title 'Self', '' using 9 title 'Cross'\nunset multiplot",
              1200, 500);
  gnuplot_png(out + "/entropy.png",
              "$d << EOD\n" + ent + "EOD\n" + head + "set title " + gp_quote("Attention entropy per layer (Fig. 9): " + model) +
                  "\nset ylabel 'mean row entropy (nats)'\nplot $d using 1:2 with linespoints title 'attention, with meta', "
                  "'' using 1:3 with linespoints dt 2 title 'attention, without meta', '' using 1:4 with linespoints title 'SSM, with meta', "
                  "'' using 1:5 with linespoints dt 2 title 'SSM, without meta'");
  gnuplot_png(out + "/magnitudes.png",
              "$d << EOD\n" + mag + "EOD\n" + head + "set title " + gp_quote("Branch output magnitudes and fusion weights (Fig. 7): " + model) +
                  "\nset ylabel 'mean L2 norm of the branch output'\nset y2label 'mean |fusion norm weight|'\nset y2tics\n"
                  "plot $d using 1:2 with linespoints title 'attention output', '' using 1:3 with linespoints title 'SSM output', "
                  "'' using 1:4 axes x1y2 with linespoints dt 2 title 'beta1 (attention norm)', '' using 1:5 axes x1y2 with linespoints dt 2 "
                  "title 'beta2 (SSM norm)'");
  gnuplot_png(out + "/importance.png",
              "$d << EOD\n" + imp + "EOD\n" + head + "set title " + gp_quote("Loss increase without a branch (head importance): " + model) +
                  "\nset ylabel 'loss(without) - loss'\nset style data histograms\nset style fill solid 0.8 border -1\n"
                  "plot $d using 2:xtic(1) title 'attention removed', '' using 3 title 'SSM removed'");
}

void run(const Opts& o) {
  apply_threads(o.threads);
  HYMBA_CHECK(!o.text.empty(), "--text FILE is required");
  HYMBA_CHECK(o.max_tokens >= 2, "--max-tokens must be at least 2");
  HYMBA_CHECK(parse_quantize(o.quantize) == DType::F32, "analyze reads the weights as stored (--quantize is not supported)");
  HYMBA_CHECK(o.lora.empty(), "analyze reads the weights as stored (--lora is not supported: `hymba merge` the adapter "
                              "into a model folder and analyze that)");
  const std::string dir = o.dir();
  const std::string text = read_file(o.text);
  HYMBA_CHECK(!text.empty(), o.text + ": empty file");
  auto tok = Tokenizer::load(dir);
  auto ids = tok->encode(text, true);
  if (int64_t(ids.size()) > o.max_tokens) ids.resize(size_t(o.max_tokens));
  HYMBA_CHECK(ids.size() >= 2, o.text + ": fewer than 2 tokens");
  auto ck = load_checkpoint(dir);
  const Config& c = ck->config;
  std::vector<int> layers;
  if (o.layers.empty()) {
    for (int l : {0, int(c.num_hidden_layers / 2), int(c.num_hidden_layers - 1)})
      if (std::find(layers.begin(), layers.end(), l) == layers.end()) layers.push_back(l);
  } else {
    layers = parse_list(o.layers, "--layers");
  }
  const auto heads = parse_list(o.heads, "--heads");
  std::filesystem::create_directories(o.out);
  std::fprintf(stderr, "analyze: %zu tokens + %lld meta tokens, %lld layers\n", ids.size(), (long long)c.num_memory_tokens,
               (long long)c.num_hidden_layers);
  const Report r = analyze(c, ck->weights, ids, layers, heads);

  nlohmann::json j = {{"model", dir}, {"text", o.text}, {"tokens", ids}, {"meta_tokens", r.M}, {"loss", r.loss}};
  nlohmann::json L = nlohmann::json::array();
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const auto& s = r.layers[l];
    nlohmann::json x = {{"layer", l}, {"attention", s.attn}, {"ssm", s.ssm}, {"global", s.global}};
    if (s.attn)
      x["attn"] = {{"share", shares(s.attn_share)}, {"share_without_meta", shares(s.attn_share_nometa)},
                   {"entropy", s.attn_entropy}, {"entropy_without_meta", s.attn_entropy_nometa},
                   {"output_norm", s.attn_out}, {"normed_output_norm", s.attn_normed}, {"fusion_weight_mean_abs", s.fusion_w_attn}};
    if (s.ssm)
      x["ssm"] = {{"share", shares(s.ssm_share)}, {"share_without_meta", shares(s.ssm_share_nometa)},
                  {"entropy", s.ssm_entropy}, {"entropy_without_meta", s.ssm_entropy_nometa},
                  {"output_norm", s.ssm_out}, {"normed_output_norm", s.ssm_normed}, {"fusion_weight_mean_abs", s.fusion_w_ssm}};
    if (s.attn && s.ssm) x["loss_without"] = {{"attn", s.loss_without_attn}, {"ssm", s.loss_without_ssm}};
    L.push_back(x);
  }
  j["layers"] = L;
  nlohmann::json maps = nlohmann::json::array();
  std::vector<std::string> pngs;
  for (const auto& m : r.maps) {
    const std::string name = m.kind == "attn" ? "attention_L" + std::to_string(m.layer) + "_H" + std::to_string(m.head)
                                              : "ssm_L" + std::to_string(m.layer);
    maps.push_back({{"kind", m.kind}, {"layer", m.layer}, {"head", m.head}, {"T", m.T}, {"M", m.M}, {"p", m.p}, {"file", name + ".png"}});
    plot_map(m, o.out + "/" + name + ".png",
             (m.kind == "attn" ? "Attention, layer " + std::to_string(m.layer) + " head " + std::to_string(m.head)
                               : "SSM implicit attention, layer " + std::to_string(m.layer)) + " (" + dir + ")");
  }
  j["maps"] = maps;
  plot_figures(r, o.out, dir);
  write_file_atomic(o.out + "/analysis.json", j.dump(1) + "\n");
  // A short summary on stdout.
  std::printf("loss on the text: %.4f (%zu tokens)\n|layer|attn Meta|BOS|Self|Cross|entropy (w/o meta)|SSM Meta|BOS|Self|Cross|entropy (w/o meta)|Δloss -attn|Δloss -SSM|\n"
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", r.loss, ids.size());
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const auto& s = r.layers[l];
    std::printf("|%zu|%.3f|%.3f|%.3f|%.3f|%.3f (%.3f)|%.3f|%.3f|%.3f|%.3f|%.3f (%.3f)|%+.4f|%+.4f|\n", l, s.attn_share[0], s.attn_share[1],
                s.attn_share[2], s.attn_share[3], s.attn_entropy, s.attn_entropy_nometa, s.ssm_share[0], s.ssm_share[1], s.ssm_share[2],
                s.ssm_share[3], s.ssm_entropy, s.ssm_entropy_nometa, s.attn && s.ssm ? s.loss_without_attn - r.loss : 0.0,
                s.attn && s.ssm ? s.loss_without_ssm - r.loss : 0.0);
  }
  std::fprintf(stderr, "analyze: wrote %s/analysis.json and figures (attention_L*_H*.png, ssm_L*.png, categories.png, entropy.png, "
               "magnitudes.png, importance.png)\n", o.out.c_str());
}

Register reg("analyze", "What the heads do on a text: attention maps, Meta/BOS/Self/Cross shares, entropy, branch magnitudes, head importance",
             [](CLI::App& sub) {
               auto o = std::make_shared<Opts>();
               add_model_flags(sub, *o, /*with_cache_type=*/false);
               sub.add_option("--text", o->text, "UTF-8 text to analyse (encoded with BOS)");
               sub.add_option("-o,--out", o->out, "output folder for analysis.json and the PNG figures (default analysis/)");
               sub.add_option("--layers", o->layers, "layers whose maps to draw (default: first, middle, last)");
               sub.add_option("--heads", o->heads, "attention heads whose maps to draw (default 0)");
               sub.add_option("--max-tokens", o->max_tokens, "use at most this many tokens of the text (default 128)");
               sub.callback([o] { run(*o); });
             });

}  // namespace
}  // namespace hymba::cli
