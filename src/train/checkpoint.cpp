#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "base/error.h"

namespace hymba {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "checkpoint-";

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Files inside a folder are fsync'd by their writers; this makes the folder's entries durable.
void fsync_tree(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) fsync_tree(e.path().string());
  fsync_dir(dir);
}

// Points `link` at `target` atomically (a temp symlink renamed over it).
void set_symlink(const std::string& link, const std::string& target) {
  const std::string tmp = link + ".tmp";
  ::unlink(tmp.c_str());
  if (::symlink(target.c_str(), tmp.c_str()) != 0)
    fail("cannot create " + tmp + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), link.c_str()) != 0) {
    const std::string e = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail("cannot switch " + link + " to " + target + ": " + e);
  }
}

int64_t step_of(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0) return -1;
  const std::string n = name.substr(std::strlen(kPrefix));
  if (n.empty() || !std::all_of(n.begin(), n.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) || n.size() > 18) return -1;
  return std::stoll(n);
}

std::string latest_name(const std::string& out) {
  std::error_code ec;
  const fs::path p = fs::read_symlink(fs::path(out) / "latest", ec);
  return ec ? std::string() : p.filename().string();
}

}  // namespace

std::string current_checkpoint(const std::string& out) {
  const std::string name = latest_name(out);
  if (!name.empty()) {
    const std::string dir = out + "/" + name;
    HYMBA_CHECK(fs::is_directory(dir), out + "/latest points to " + name + ", which is missing");
    return dir;
  }
  if (fs::is_regular_file(out + "/train_state.json")) return out;  // a run from before checkpoint folders
  return "";
}

void clean_stale_checkpoints(const std::string& out) {
  if (!fs::is_directory(out)) return;
  const std::string current = latest_name(out);
  std::vector<fs::path> drop;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string n = e.path().filename().string();
    const bool staging = n.rfind(".checkpoint-", 0) == 0;
    const bool temp_file = n.find(".tmp.") != std::string::npos || n == "latest.tmp";
    // A complete folder that never became current (killed between rename and pointer switch)
    // is newer than the pointer but was never promised to anyone: the pointer is the truth.
    const bool orphan = !current.empty() && step_of(n) >= 0 && n != current &&
                        step_of(n) > step_of(current);
    if (staging || temp_file || orphan) drop.push_back(e.path());
  }
  for (const auto& p : drop) fs::remove_all(p);
}

std::string begin_checkpoint(const std::string& out, int64_t step) {
  const std::string dir = out + "/." + kPrefix + std::to_string(step) + ".tmp";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  HYMBA_CHECK(!ec, "cannot create " + dir + ": " + ec.message());
  return dir;
}

void commit_checkpoint(const std::string& out, const std::string& staged, int64_t step, int keep) {
  const std::string name = kPrefix + std::to_string(step);
  const std::string final_dir = out + "/" + name;
  fsync_tree(staged);
  std::error_code ec;
  if (latest_name(out) == name) {  // this step is already the current checkpoint (same state)
    fs::remove_all(staged, ec);
    return;
  }
  fs::remove_all(final_dir, ec);  // an orphan of an earlier kill: never current
  fs::rename(staged, final_dir, ec);
  HYMBA_CHECK(!ec, "cannot rename " + staged + " to " + final_dir + ": " + ec.message());
  fsync_dir(out);
  set_symlink(out + "/latest", name);
  fsync_dir(out);

  // OUT/<file> -> latest/<file>: set once, they follow every later switch of `latest`.
  for (const auto& e : fs::directory_iterator(final_dir)) {
    const std::string f = e.path().filename().string();
    const std::string link = out + "/" + f, target = "latest/" + f;
    std::error_code le;
    if (fs::is_symlink(link) && fs::read_symlink(link, le).string() == target) continue;
    set_symlink(link, target);
  }
  fsync_dir(out);

  // Older checkpoints beyond `keep`, oldest first; only now that the new one is current.
  std::vector<std::pair<int64_t, fs::path>> old;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && !e.is_symlink() && step_of(n) >= 0 && n != name) old.push_back({step_of(n), e.path()});
  }
  std::sort(old.begin(), old.end());
  const size_t drop = old.size() + 1 > size_t(std::max(keep, 1)) ? old.size() + 1 - size_t(std::max(keep, 1)) : 0;
  for (size_t i = 0; i < drop; ++i) fs::remove_all(old[i].second, ec);
}

}  // namespace hymba
