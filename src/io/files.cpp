#include "io/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "base/error.h"

namespace hymba {

namespace {
std::string sys_err() { return std::strerror(errno); }

std::string dir_of(const std::string& path) {
  auto p = path.find_last_of('/');
  if (p == std::string::npos) return ".";
  return p == 0 ? "/" : path.substr(0, p);
}
}  // namespace

// Temp names are "<target>.tmp.<pid>.<suffix>": the pid lets a later writer of the same target
// remove what a killed process left, without touching a live writer's file.
std::string AtomicFile::temp_prefix() const { return path_ + ".tmp."; }

void AtomicFile::remove_stale_temps() const {
  const std::string dir = dir_of(path_), prefix = temp_prefix();
  const std::string base = prefix.substr(prefix.find_last_of('/') + 1);  // npos + 1 == 0
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.compare(0, base.size(), base) != 0) continue;
    char* end = nullptr;
    const long pid = std::strtol(n.c_str() + base.size(), &end, 10);
    if (pid <= 0 || *end != '.' || pid == long(::getpid())) continue;
    if (::kill(pid_t(pid), 0) != 0 && errno == ESRCH) ::unlink((dir + "/" + n).c_str());
  }
  ::closedir(d);
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  remove_stale_temps();
#ifdef O_TMPFILE
  // An unnamed file while it is written: a process killed mid-write leaves nothing behind.
  fd_ = ::open(dir_of(path).c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
  if (fd_ >= 0) return;
#endif
  // Filesystems without O_TMPFILE: a named temp file, removed by the next writer if we are killed.
  tmp_ = temp_prefix() + std::to_string(::getpid()) + ".XXXXXX";
  fd_ = ::mkstemp(tmp_.data());
  if (fd_ < 0)
    fail("cannot write " + path + ": cannot create a temp file in " + dir_of(path) + " (" +
         sys_err() + ")");
  ::fchmod(fd_, 0644);  // mkstemp makes 0600; checkpoints should be readable like normal files
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {  // not committed: drop the temp file, the target stays untouched
    ::close(fd_);
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t size) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write " + path_ + ": " + sys_err());
    }
    p += n;
    size -= size_t(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail("cannot write " + path_ + ": fsync: " + sys_err());
  if (tmp_.empty()) {
    // linkat cannot replace a file, so the data gets a temp name for the instant before rename.
    const std::string proc = "/proc/self/fd/" + std::to_string(fd_);
    for (int attempt = 0;; ++attempt) {
      tmp_ = temp_prefix() + std::to_string(::getpid()) + "." + std::to_string(attempt);
      if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, tmp_.c_str(), AT_SYMLINK_FOLLOW) == 0) break;
      if (errno != EEXIST || attempt > 100) {
        std::string e = sys_err();
        tmp_.clear();  // nothing was named; the destructor only closes
        fail("cannot write " + path_ + ": link: " + e);
      }
    }
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    ::unlink(tmp_.c_str());
    fail("cannot write " + path_ + ": close: " + sys_err());
  }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::string e = sys_err();
    ::unlink(tmp_.c_str());
    fail("cannot write " + path_ + ": rename: " + e);
  }
  // Make the rename itself durable; failure here is harmless for correctness.
  int dfd = ::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFile f(path);
  f.write(data, size);
  f.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read " + path + ": " + sys_err());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read " + path + ": read error");
  return ss.str();
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  std::string sh = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) fail("write_npy_f32 " + path + ": negative dimension");
    n *= shape[i];
    sh += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) sh += ",";
    if (i + 1 < shape.size()) sh += " ";
  }
  sh += ")";
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + sh + ", }";
  // magic(6) + version(2) + len(2) + dict + '\n', padded with spaces to a multiple of 64.
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::string hdr = "\x93NUMPY";
  hdr += char(1);
  hdr += char(0);
  uint16_t hl = uint16_t(dict.size());
  hdr += char(hl & 0xff);
  hdr += char(hl >> 8);
  hdr += dict;
  AtomicFile f(path);
  f.write(hdr.data(), hdr.size());
  f.write(data, size_t(n) * 4);  // host is little-endian (x86/arm64)
  f.commit();
}

}  // namespace hymba
