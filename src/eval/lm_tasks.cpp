#include "eval/lm_tasks.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "base/error.h"
#include "io/files.h"
#include "io/json_num.h"

namespace hymba::lmeval {

using nlohmann::json;

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t i = 0;
  for (size_t j; (j = s.find(sep, i)) != std::string::npos; i = j + 1) out.push_back(s.substr(i, j - i));
  out.push_back(s.substr(i));
  return out;
}

std::string lower_ascii(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x80) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// len() of a Python str: code points.
int64_t n_codepoints(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// ---- rows and fields ------------------------------------------------------------------------

std::vector<Row> read_jsonl(const std::string& path) {
  HYMBA_CHECK(file_exists(path), path + ": no such file");
  return parse_jsonl(read_file(path), path);
}

std::vector<Row> parse_jsonl(const std::string& text, const std::string& path) {
  std::vector<Row> rows;
  size_t i = 0;
  int64_t line = 0;
  while (i < text.size()) {
    size_t j = text.find('\n', i);
    if (j == std::string::npos) j = text.size();
    ++line;
    std::string s = text.substr(i, j - i);
    i = j + 1;
    if (s.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line);
    json v = json::parse(s, nullptr, /*allow_exceptions=*/false);
    HYMBA_CHECK(!v.is_discarded(), where + ": not valid JSON (one object per line expected)");
    HYMBA_CHECK(v.is_object(), where + ": not a JSON object");
    rows.push_back({std::move(v), where});
  }
  HYMBA_CHECK(!rows.empty(), path + ": no rows (empty file)");
  return rows;
}

namespace {

[[noreturn]] void bad(const Row& r, const std::string& field, const std::string& what) {
  fail(r.where + ": field '" + field + "' " + what);
}

const json& field(const Row& r, const std::string& name) {
  auto it = r.j.find(name);
  if (it == r.j.end()) bad(r, name, "is missing");
  return *it;
}

std::string str_field(const Row& r, const std::string& name) {
  const json& v = field(r, name);
  if (!v.is_string()) bad(r, name, "must be a string");
  return v.get<std::string>();
}

std::vector<std::string> str_list(const Row& r, const json& v, const std::string& name) {
  if (!v.is_array() || v.empty()) bad(r, name, "must be a non-empty list of strings");
  std::vector<std::string> out;
  for (auto& e : v) {
    if (!e.is_string()) bad(r, name, "must be a non-empty list of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

// An integer label (datasets writes some as strings: hellaswag's "label", winogrande's "answer").
int64_t int_field(const Row& r, const std::string& name) {
  const json& v = field(r, name);
  int64_t x = 0;
  if (json_number(v, &x)) return x;
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    char* end = nullptr;
    const long long x = std::strtoll(s.c_str(), &end, 10);
    if (!s.empty() && end && *end == 0) return x;
  }
  bad(r, name, "must be an integer (got " + v.dump() + ")");
}

void check_label(const Row& r, const std::string& name, int64_t label, size_t n) {
  if (label < 0 || label >= int64_t(n))
    bad(r, name, "is " + std::to_string(label) + ", outside the " + std::to_string(n) + " choices");
}

// ---- Python string semantics ------------------------------------------------------------------

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string strip(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  std::string out;
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) out += s.substr(i, j - i) + to;
  return out + s.substr(i);
}

// str.capitalize() for ASCII (other bytes are left as they are).
std::string capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) continue;
    s[i] = char(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return s;
}

// re.sub(r"O\s*([^C]*?)\s*C", r"O\1C", s): the text between an opener and the next closer,
// stripped of surrounding whitespace.
std::string tighten(const std::string& s, char open, char close) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const size_t a = s.find(open, i);
    if (a == std::string::npos) break;
    const size_t b = s.find(close, a + 1);
    if (b == std::string::npos) break;
    out += s.substr(i, a - i);
    out += open;
    out += strip(s.substr(a + 1, b - a - 1));
    out += close;
    i = b + 1;
  }
  return out + s.substr(i);
}

// The harness's hellaswag preprocess().
std::string hellaswag_preprocess(std::string t) {
  t = strip(t);
  t = replace_all(t, " [title]", ". ");
  std::string out;  // re.sub("\\[.*?\\]", "", t): '.' does not match a newline
  size_t i = 0;
  while (i < t.size()) {
    const size_t a = t.find('[', i);
    if (a == std::string::npos) break;
    const size_t b = t.find_first_of("]\n", a + 1);
    if (b == std::string::npos) break;
    if (t[b] == '\n') {
      out += t.substr(i, b - i);
      i = b;
      continue;
    }
    out += t.substr(i, a - i);
    i = b + 1;
  }
  t = out + t.substr(i);
  return replace_all(t, "  ", " ");
}

// The harness's wikitext_detokenizer().
std::string wikitext_detokenize(std::string s) {
  s = replace_all(s, "s '", "s'");
  {  // re.sub(r"/' [0-9]/", r"/'[0-9]/", s): the replacement is literal
    std::string out;
    size_t i = 0;
    for (size_t j; (j = s.find("/' ", i)) != std::string::npos;) {
      if (j + 4 < s.size() && std::isdigit(static_cast<unsigned char>(s[j + 3])) && s[j + 4] == '/') {
        out += s.substr(i, j - i) + "/'[0-9]/";
        i = j + 5;
      } else {
        out += s.substr(i, j + 1 - i);
        i = j + 1;
      }
    }
    s = out + s.substr(i);
  }
  for (auto [a, b] : {std::pair{" @-@ ", "-"}, {" @,@ ", ","}, {" @.@ ", "."}, {" : ", ": "}, {" ; ", "; "},
                      {" . ", ". "}, {" ! ", "! "}, {" ? ", "? "}, {" , ", ", "}})
    s = replace_all(s, a, b);
  s = tighten(s, '(', ')');
  s = tighten(s, '[', ']');
  s = tighten(s, '{', '}');
  s = tighten(s, '"', '"');
  s = tighten(s, '\'', '\'');
  for (auto [a, b] : {std::pair<std::string, std::string>{"= = = =", "===="}, {"= = =", "==="}, {"= =", "=="},
                      {" \xC2\xB0 ", "\xC2\xB0"}, {" \n", "\n"}, {"\n ", "\n"}, {" N ", " 1 "}, {" 's", "'s"}})
    s = replace_all(s, a, b);
  return s;
}

// len(re.split(r"\s+", s)).
int64_t split_count(const std::string& s) {
  int64_t n = 1;
  for (size_t i = 0; i < s.size();) {
    if (!is_space(s[i])) {
      ++i;
      continue;
    }
    ++n;
    while (i < s.size() && is_space(s[i])) ++i;
  }
  return n;
}

const std::vector<TaskInfo>& tasks() {
  static const std::vector<TaskInfo> t = {
      {"arc_easy", 1.0, Kind::MultipleChoice, {"acc", "acc_norm"}},
      {"arc_challenge", 1.0, Kind::MultipleChoice, {"acc", "acc_norm"}},
      {"piqa", 1.0, Kind::MultipleChoice, {"acc", "acc_norm"}},
      {"hellaswag", 1.0, Kind::MultipleChoice, {"acc", "acc_norm"}},
      {"winogrande", 1.0, Kind::MultipleChoice, {"acc"}},
      {"openbookqa", 1.0, Kind::MultipleChoice, {"acc", "acc_norm"}},
      {"mmlu", 1.0, Kind::MultipleChoice, {"acc"}},
      {"lambada_openai", 1.0, Kind::Loglikelihood, {"perplexity", "acc"}},
      {"wikitext", 2.0, Kind::Rolling, {"word_perplexity", "byte_perplexity", "bits_per_byte"}},
      {"squad_completion", 0.0, Kind::Generate, {"contains"}},
      {"swde", 0.0, Kind::Generate, {"contains"}},
  };
  return t;
}

// Multiple choice with the answer letter/label looked up in choices.label (ARC, OpenBookQA).
void labelled_choices(const Row& r, Doc& d, bool lstrip_key) {
  const json& ch = field(r, "choices");
  if (!ch.is_object()) bad(r, "choices", "must be an object with 'text' and 'label' lists");
  if (!ch.contains("text")) bad(r, "choices.text", "is missing");
  if (!ch.contains("label")) bad(r, "choices.label", "is missing");
  d.choices = str_list(r, ch["text"], "choices.text");
  const auto labels = str_list(r, ch["label"], "choices.label");
  if (labels.size() != d.choices.size()) bad(r, "choices.label", "must have as many entries as choices.text");
  std::string key = str_field(r, "answerKey");
  if (lstrip_key) key.erase(0, key.find_first_not_of(" \t\n\r\f\v") == std::string::npos ? key.size() : key.find_first_not_of(" \t\n\r\f\v"));
  const auto it = std::find(labels.begin(), labels.end(), key);
  if (it == labels.end()) bad(r, "answerKey", "is '" + key + "', not one of choices.label");
  d.gold = it - labels.begin();
}

std::string mmlu_text(const Row& r, std::vector<std::string>* choices_out = nullptr) {
  const std::string q = str_field(r, "question");
  const auto ch = str_list(r, field(r, "choices"), "choices");
  if (ch.size() != 4) bad(r, "choices", "must have 4 entries (the harness's A-D prompt)");
  if (choices_out) *choices_out = ch;
  return strip(q) + "\nA. " + ch[0] + "\nB. " + ch[1] + "\nC. " + ch[2] + "\nD. " + ch[3] + "\nAnswer:";
}

}  // namespace

const TaskInfo& task_info(const std::string& name) {
  for (auto& t : tasks())
    if (t.name == name) return t;
  std::string known;
  for (auto& t : tasks()) known += (known.empty() ? "" : ", ") + t.name;
  fail("unknown task '" + name + "' (known: " + known + ")");
}

std::vector<std::string> task_names() {
  std::vector<std::string> n;
  for (auto& t : tasks()) n.push_back(t.name);
  return n;
}

std::vector<Doc> build_docs(const TaskInfo& task, const std::vector<Row>& rows,
                            const std::vector<Row>& fewshot, int k) {
  const std::string& name = task.name;
  HYMBA_CHECK(k >= 0, "--num-fewshot must be >= 0");
  HYMBA_CHECK(k == 0 || name == "mmlu",
              "--num-fewshot: few-shot contexts are supported for mmlu (first K rows of its dev split); "
              "the paper evaluates " + name + " zero-shot");
  std::map<std::string, std::vector<const Row*>> shots;  // mmlu: dev rows per subject, in order
  if (k > 0) {
    HYMBA_CHECK(!fewshot.empty(), "--num-fewshot " + std::to_string(k) + " needs --fewshot-data DEV.jsonl (mmlu's dev split)");
    for (auto& r : fewshot) shots[str_field(r, "subject")].push_back(&r);
  }
  std::vector<Doc> docs;
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    Doc d;
    d.doc_id = int64_t(i);
    d.row = &r;
    std::string ctx;
    if (name == "arc_easy" || name == "arc_challenge") {
      labelled_choices(r, d, false);
      ctx = "Question: " + str_field(r, "question") + "\nAnswer:";
    } else if (name == "openbookqa") {
      labelled_choices(r, d, true);
      ctx = str_field(r, "question_stem");
    } else if (name == "piqa") {
      ctx = "Question: " + str_field(r, "goal") + "\nAnswer:";
      d.choices = {str_field(r, "sol1"), str_field(r, "sol2")};
      d.gold = int_field(r, "label");
      check_label(r, "label", d.gold, 2);
    } else if (name == "hellaswag") {
      const auto endings = str_list(r, field(r, "endings"), "endings");
      ctx = hellaswag_preprocess(str_field(r, "activity_label") + ": " + str_field(r, "ctx_a") + " " +
                                 capitalize(str_field(r, "ctx_b")));
      for (auto& e : endings) d.choices.push_back(hellaswag_preprocess(e));
      d.gold = int_field(r, "label");
      check_label(r, "label", d.gold, d.choices.size());
    } else if (name == "winogrande") {
      const std::string s = str_field(r, "sentence");
      const size_t u = s.find('_');
      if (u == std::string::npos) bad(r, "sentence", "has no '_' blank");
      const std::string ans = str_field(r, "answer");
      if (ans != "1" && ans != "2") bad(r, "answer", "must be \"1\" or \"2\" (got \"" + ans + "\")");
      d.gold = ans == "1" ? 0 : 1;
      d.choices = {s.substr(0, u) + str_field(r, "option1"), s.substr(0, u) + str_field(r, "option2")};
      d.target = strip(s.substr(u + 1));
      // multiple_inputs: the option goes into the context, the rest of the sentence is scored.
      for (auto& c : d.choices) d.args.push_back({c, " " + d.target});
      docs.push_back(std::move(d));
      continue;
    } else if (name == "mmlu") {
      const std::string subject = str_field(r, "subject");
      ctx = "The following are multiple choice questions (with answers) about " + replace_all(subject, "_", " ") + ".\n\n";
      if (k > 0) {
        const auto& dev = shots[subject];
        HYMBA_CHECK(int64_t(dev.size()) >= k, r.where + ": the few-shot file has " + std::to_string(dev.size()) +
                                                  " rows of subject '" + subject + "', fewer than --num-fewshot " + std::to_string(k));
        for (int s = 0; s < k; ++s) {
          const Row& e = *dev[size_t(s)];
          const int64_t a = int_field(e, "answer");
          check_label(e, "answer", a, 4);
          ctx += mmlu_text(e) + " " + std::string(1, char('A' + a)) + "\n\n";
        }
      }
      std::vector<std::string> unused;
      ctx += mmlu_text(r, &unused);
      d.choices = {"A", "B", "C", "D"};
      d.gold = int_field(r, "answer");
      check_label(r, "answer", d.gold, 4);
      d.subtask = subject;
    } else if (name == "lambada_openai") {
      const auto words = split(str_field(r, "text"), ' ');
      if (words.size() < 2) bad(r, "text", "needs at least two words");
      for (size_t w = 0; w + 1 < words.size(); ++w) ctx += (w ? " " : "") + words[w];
      d.target = " " + words.back();
      d.args.push_back({ctx, d.target});
      docs.push_back(std::move(d));
      continue;
    } else if (name == "wikitext") {
      const std::string page = str_field(r, "page");
      d.target = wikitext_detokenize(page);
      d.words = split_count(page);
      d.bytes = int64_t(page.size());
      d.args.push_back({"", d.target});
      docs.push_back(std::move(d));
      continue;
    } else if (name == "squad_completion" || name == "swde") {
      ctx = name == "swde" ? strip(str_field(r, "text")) : str_field(r, "text");
      if (ctx.empty()) bad(r, "text", "is empty");
      d.target = str_field(r, "value");
      d.args.push_back({ctx, ""});
      docs.push_back(std::move(d));
      continue;
    } else {
      fail("task " + name + " has no prompt builder");
    }
    for (auto& c : d.choices) d.args.push_back({ctx, " " + c});
    docs.push_back(std::move(d));
  }
  return docs;
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok, int32_t bos,
                                                                  const std::string& context,
                                                                  const std::string& continuation) {
  if (context.empty()) return {{bos}, tok.encode(continuation, false)};
  std::string ctx = context, cont = continuation;
  size_t end = ctx.size();
  while (end > 0 && is_space(ctx[end - 1])) --end;
  cont = ctx.substr(end) + cont;
  ctx.resize(end);
  HYMBA_CHECK(!ctx.empty(), "a context of only whitespace cannot be scored");
  const auto whole = tok.encode(ctx + cont, false);
  auto ce = tok.encode(ctx, false);
  const size_t n = std::min(ce.size(), whole.size());
  return {std::move(ce), std::vector<int32_t>(whole.begin() + int64_t(n), whole.end())};
}

}  // namespace hymba::lmeval
