// A training run's folder, where each checkpoint is one atomic unit (weights + config + tokenizer
// + optimizer + trainer state + metrics):
//   OUT/checkpoint-<step>/   one complete checkpoint, written as OUT/.checkpoint-<step>.tmp/ first
//   OUT/latest -> checkpoint-<step>   the one pointer, switched by rename() once the new one is complete
//   OUT/<file> -> latest/<file>       so OUT itself loads like any Hugging Face model folder
// A kill at any moment leaves either the previous checkpoint or the new one, never a mix.
#pragma once
#include <cstdint>
#include <string>

namespace hymba {

// The folder holding the run's current checkpoint, or "" if there is none. Runs written before
// checkpoint folders existed (train_state.json directly in OUT) resolve to OUT itself.
std::string current_checkpoint(const std::string& out);

// Removes what an interrupted save leaves behind (OUT/.checkpoint-*.tmp/, temp files of atomic
// writes, checkpoint folders that no pointer names). Call once at start, before any save.
void clean_stale_checkpoints(const std::string& out);

// A fresh, empty staging folder for the checkpoint of `step`.
std::string begin_checkpoint(const std::string& out, int64_t step);

// Makes the staged folder the run's checkpoint (rename + pointer switch, each fsync'd), links
// OUT/<file> to it and then deletes older checkpoints beyond `keep` (>= 1).
void commit_checkpoint(const std::string& out, const std::string& staged, int64_t step, int keep);

}  // namespace hymba
