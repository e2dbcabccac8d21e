// hymba grad: loss and gradient of every parameter for one batch, written as safetensors under
// the official tensor names (for checking the backward against the float64 reference).
#include <cstdio>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "io/safetensors.h"
#include "model/adapter.h"
#include "model/hymba.h"
#include "train/params.h"
#include "train/dpo.h"
#include "train/step.h"

namespace hymba::cli {
namespace {

struct Opts {
  std::string model, batch, out, lora;
  double dpo_beta = 0.0, dropout = 0.0;
  uint64_t dropout_seed = 1;
  std::string grad_ckpt = "off";
  int threads = 0;
};

void run(const Opts& o) {
  apply_threads(o.threads);
  HYMBA_CHECK(o.dropout >= 0 && o.dropout < 1, "--dropout must be in [0, 1)");
  HYMBA_CHECK(o.grad_ckpt == "on" || o.grad_ckpt == "off", "--grad-checkpointing must be on or off");
  const bool ckpt = o.grad_ckpt == "on";
  // "1,2,3;4,5,6": B sequences of L+1 ids; inputs = [:, :-1], targets = [:, 1:].
  std::vector<std::vector<int32_t>> seqs;
  size_t i = 0;
  while (i <= o.batch.size()) {
    size_t j = o.batch.find(';', i);
    if (j == std::string::npos) j = o.batch.size();
    seqs.push_back(parse_ids(o.batch.substr(i, j - i)));
    i = j + 1;
  }
  const int64_t B = int64_t(seqs.size()), L = int64_t(seqs[0].size()) - 1;
  HYMBA_CHECK(L >= 1, "--batch: each sequence needs at least 2 ids");
  std::vector<int32_t> in, tg;
  for (auto& s : seqs) {
    HYMBA_CHECK(int64_t(s.size()) == L + 1, "--batch: all sequences must have the same length");
    in.insert(in.end(), s.begin(), s.end() - 1);
    tg.insert(tg.end(), s.begin() + 1, s.end());
  }
  auto check_ids = [&](const Config& c) {
    for (int32_t id : in)
      HYMBA_CHECK(id >= 0 && id < c.vocab_size, "token id " + std::to_string(id) + " out of range");
    for (int32_t id : tg)
      HYMBA_CHECK(id < c.vocab_size, "target id " + std::to_string(id) + " out of range");
  };
  double loss = 0.0;
  std::vector<TensorOut> out;
  ParamArena a;
  std::unique_ptr<Checkpoint> ck;
  AdapterSet ad;
  if (!o.lora.empty()) {  // frozen base as stored (any dtype), gradients of the adapters only
    ck = load_checkpoint(o.model);
    check_ids(ck->config);
    ad = load_peft_adapter(o.lora, ck->config, ck->weights);
    ad.enable_grad();
    HymbaModel m(ck->config, ck->weights);
    m.set_grad_checkpointing(ckpt);
    Weights frozen;
    frozen.layers.resize(ck->weights.layers.size());
    frozen.meta = ad.gmeta;  // the adapter's meta tokens (modules_to_save), if any
    if (o.dpo_beta > 0) {  // sequence 0 chosen, 1 rejected; the reference is the base (adapters off)
      HYMBA_CHECK(B == 2, "--dpo: give two sequences, chosen;rejected");
      DpoPair p{{in.data(), tg.data(), L}, {in.data() + L, tg.data() + L, L}};
      p.ref_chosen = sequence_logp(m, p.chosen), p.ref_rejected = sequence_logp(m, p.rejected);
      m.set_adapters(&ad.view, &ad.gview);
      m.set_meta_tokens(ad.meta);
      loss = dpo_loss_and_grads(m, frozen, std::span<const DpoPair>(&p, 1), o.dpo_beta).loss;
    } else {
      m.set_adapters(&ad.view, &ad.gview);
      m.set_meta_tokens(ad.meta);
      m.set_adapter_dropout(float(o.dropout), o.dropout_seed);
      loss = loss_and_grads(m, frozen, in.data(), tg.data(), B, L);
    }
    for (const auto& t : ad.tensors) out.push_back({t.name, DType::F32, t.shape, ad.grad.data() + t.offset});
  } else {
    a = arena_from_checkpoint(o.model);
    check_ids(a.config);
    HymbaModel m(a.config, a.w);
    m.set_grad_checkpointing(ckpt);
    loss = loss_and_grads(m, a, in.data(), tg.data(), B, L);
    for (size_t k = 0; k < a.specs.size(); ++k)
      out.push_back({a.specs[k].name, DType::F32, a.specs[k].shape, a.grad.data() + a.offset[k]});
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", loss);
  write_safetensors(o.out, out, {{"format", "pt"}, {"loss", buf}});
  std::printf("loss %.9g\n", loss);
}

Register reg("grad", "Loss and parameter gradients of one batch (debugging, tests)", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("-m,--model", o->model, "model folder")->required();
  sub.add_option("--batch", o->batch, "sequences of ids: '1,2,3;4,5,6' (inputs [:-1], targets [1:])")->required();
  sub.add_option("-o,--out", o->out, "output .safetensors")->required();
  sub.add_option("--lora", o->lora, "PEFT adapter folder: gradients of the adapter tensors, base frozen");
  sub.add_option("--dpo", o->dpo_beta, "with --lora: the DPO loss with this beta (batch: chosen;rejected, reference = the base)");
  sub.add_option("--dropout", o->dropout,
                 "with --lora: lora_dropout p with the training masks of --dropout-seed (HymbaModel::adapter_dropout)");
  sub.add_option("--dropout-seed", o->dropout_seed, "the masks' seed (default 1)");
  sub.add_option("--grad-checkpointing", o->grad_ckpt, "on or off (default): activation checkpointing in the backward");
  sub.add_option("-t,--threads", o->threads, "threads");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
