// lm-evaluation-harness tasks up to their requests (no model needed, so the parsers of
// `hymba eval --data` rows can be fuzzed alone: fuzz/eval_rows_fuzz.cpp): JSONL rows as
// `datasets` exports them, each task's prompt builder (the harness's doc_to_text/choice/target),
// and the harness's context/continuation token split. lm_eval.h scores them with a model.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tokenizer.h"

namespace hymba::lmeval {

// Python's str.split(sep) for one character.
std::vector<std::string> split(const std::string& s, char sep);

// One row of a JSONL file (as `datasets` exports it); `where` = "FILE:LINE" for messages.
struct Row {
  nlohmann::json j;
  std::string where;
};
// Throws hymba::Error naming the file (missing/empty) or the line (not a JSON object).
std::vector<Row> read_jsonl(const std::string& path);
// The same for the text of a file already read; `path` names it in messages.
std::vector<Row> parse_jsonl(const std::string& text, const std::string& path);

enum class Kind { MultipleChoice, Loglikelihood, Rolling, Generate };

struct TaskInfo {
  std::string name;
  double version;
  Kind kind;
  std::vector<std::string> metrics;  // as the harness names them
};
const TaskInfo& task_info(const std::string& name);  // throws listing the known tasks
std::vector<std::string> task_names();

// A document turned into its requests.
struct Doc {
  int64_t doc_id = 0;
  const Row* row = nullptr;
  std::vector<std::pair<std::string, std::string>> args;  // (context, continuation) per request
  std::vector<std::string> choices;  // multiple choice: the harness's doc_to_choice (acc_norm lengths)
  int64_t gold = 0;
  std::string target;                // loglikelihood / generate: the target string
  std::string subtask;               // mmlu: the subject
  int64_t words = 0, bytes = 0;      // wikitext: of the original page
};

// Builds every document's requests; `fewshot` rows (mmlu's dev split) give the first k examples
// of the same subject. Throws hymba::Error naming the row and field on bad input.
std::vector<Doc> build_docs(const TaskInfo& task, const std::vector<Row>& rows,
                            const std::vector<Row>& fewshot, int k);

// The harness's _encode_pair: trailing spaces of the context move to the continuation; the
// continuation is the tokens of context+continuation after the context's tokens; an empty
// context is BOS alone. Throws hymba::Error for a context of only whitespace.
std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok, int32_t bos,
                                                                  const std::string& context,
                                                                  const std::string& continuation);

// Python's len() of a str (code points) and str.lower() on ASCII (acc_norm, "contains").
int64_t n_codepoints(const std::string& s);
std::string lower_ascii(std::string s);

}  // namespace hymba::lmeval
