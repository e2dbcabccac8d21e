#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "io/files.h"

namespace hymba {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

using json = nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// One file's bytes: a read-only mmap of it, or an anonymous copy.
struct SafetensorsFile::Mapping {
  std::string path;
  const uint8_t* base = nullptr;
  size_t size = 0;
  HugeBuffer copy;  // the bytes when read (not mapped)
  ~Mapping() {
    if (base && !copy.data()) ::munmap(const_cast<uint8_t*>(base), size);
  }
};

constexpr size_t kHugePage = size_t(2) << 20;

HugeBuffer::HugeBuffer(size_t n) {
  if (n == 0) return;
  // Over-allocate by one huge page and trim to a 2 MiB aligned region of whole huge pages.
  const size_t len = (n + kHugePage - 1) / kHugePage * kHugePage;
  void* raw = ::mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED)
    fail("cannot allocate " + std::to_string(n) + " bytes: " + std::strerror(errno));
  const uintptr_t r = uintptr_t(raw), a = (r + kHugePage - 1) / kHugePage * kHugePage;
  if (a > r) ::munmap(raw, a - r);
  if (r + kHugePage > a) ::munmap(reinterpret_cast<void*>(a + len), r + kHugePage - a);
  p_ = reinterpret_cast<uint8_t*>(a);
  n_ = n;
  mapped_ = len;
  ::madvise(p_, len, MADV_HUGEPAGE);
}

HugeBuffer::~HugeBuffer() {
  if (p_) ::munmap(p_, mapped_);
}

void HugeBuffer::make_read_only() {
  if (p_) ::mprotect(p_, mapped_, PROT_READ);
}

SafetensorsFile::~SafetensorsFile() = default;

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // real headers are a few hundred kB

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Opens `path`; checks only that it is a regular file of at least 8 bytes. Returns fd and size.
int open_checked(const std::string& path, size_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open safetensors file " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("safetensors file " + path + ": not a regular file");
  }
  if (st.st_size < 8) {
    ::close(fd);
    fail("safetensors file " + path + ": file too short (" + std::to_string(st.st_size) +
         " bytes, need at least 8 for the header length)");
  }
  *size = size_t(st.st_size);
  return fd;
}

// `path` into memory: mapped, or read into a HugeBuffer.
void load_file(const std::string& path, const LoadOptions& o, const uint8_t** base, size_t* size,
               HugeBuffer* copy) {
  const int fd = open_checked(path, size);
  void* p = MAP_FAILED;
  if (o.mmap) {
    p = ::mmap(nullptr, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("cannot mmap " + path + ": " + std::strerror(errno));
    }
    // Read-ahead of the whole file now rather than 128 KiB at a time during the first tokens.
    ::madvise(p, *size, MADV_WILLNEED);
  } else {
    try {
      *copy = HugeBuffer(*size);
    } catch (const Error& e) {
      ::close(fd);
      fail("cannot read " + path + " into memory (try --mmap): " + e.what());
    }
    p = copy->data();
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    size_t done = 0;
    while (done < *size) {
      const ssize_t r = ::read(fd, copy->data() + done, std::min<size_t>(*size - done, size_t(1) << 30));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        const std::string why = r < 0 ? std::strerror(errno) : "unexpected end of file";
        ::close(fd);
        fail("cannot read safetensors file " + path + ": " + why);
      }
      done += size_t(r);
    }
    copy->make_read_only();
  }
  ::close(fd);
  if (o.mlock && ::mlock(p, *size) != 0)
    std::fprintf(stderr, "warning: --mlock: cannot lock %s in memory (%s); raise `ulimit -l`\n",
                 path.c_str(), std::strerror(errno));
  *base = static_cast<const uint8_t*>(p);
}

// Reads a non-negative integer from a JSON value (safetensors writes unsigned numbers).
bool json_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) { *out = v.get<uint64_t>(); return true; }
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x < 0) return false;
    *out = uint64_t(x);
    return true;
  }
  return false;
}

// Validates the header of one mapped file; appends its tensors (pointers into the map).
void parse_header(const std::string& path, const uint8_t* base, size_t size,
                  std::map<std::string, TensorInfo>* tensors,
                  std::map<std::string, std::string>* metadata) {
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = hlen << 8 | base[i];  // little-endian u64
  if (hlen > kMaxHeader)
    fail("safetensors file " + path + ": header length " + std::to_string(hlen) +
         " is absurd (> 100 MB); not a safetensors file?");
  if (hlen > size - 8)
    fail("safetensors file " + path + ": header length " + std::to_string(hlen) +
         " exceeds the file size " + std::to_string(size));
  const char* hp = reinterpret_cast<const char*>(base + 8);
  json h;
  try {
    h = json::parse(hp, hp + hlen);
  } catch (const json::exception& e) {
    fail("safetensors file " + path + ": header is not valid JSON: " + e.what());
  }
  if (!h.is_object()) fail("safetensors file " + path + ": header is not a JSON object");
  const uint8_t* data = base + 8 + hlen;
  const uint64_t data_size = size - 8 - hlen;

  struct Span { uint64_t b, e; std::string name; };
  std::vector<Span> spans;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("safetensors file " + path + ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail("safetensors file " + path + ": __metadata__ value '" + m.key() +
               "' is not a string");
        (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "safetensors file " + path + ", tensor '" + name + "': ";
    if (!v.is_object()) fail(where + "entry is not an object");
    if (!v.contains("dtype")) fail(where + "missing 'dtype'");
    if (!v.contains("shape")) fail(where + "missing 'shape'");
    if (!v.contains("data_offsets")) fail(where + "missing 'data_offsets'");
    const json& jd = v["dtype"];
    const json& js = v["shape"];
    const json& jo = v["data_offsets"];
    if (!jd.is_string()) fail(where + "'dtype' is not a string");
    TensorInfo t;
    t.name = name;
    if (!dtype_from_name(jd.get<std::string>(), &t.dtype))
      fail(where + "unknown or unsupported dtype '" + jd.get<std::string>() + "'");
    if (!js.is_array()) fail(where + "'shape' is not an array");
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& d : js) {
      if (!d.is_number_integer()) fail(where + "'shape' has a non-integer entry");
      if (d.is_number_unsigned() ? false : d.get<int64_t>() < 0)
        fail(where + "negative dimension in shape " + d.dump());
      uint64_t x = d.get<uint64_t>();
      if (x > (uint64_t(1) << 48)) overflow = true;
      t.shape.push_back(int64_t(x));
      if (x && numel > (uint64_t(1) << 60) / x) overflow = true;
      numel *= x;
    }
    if (overflow) fail(where + "shape " + shape_str(t.shape) + " is absurdly large");
    if (!jo.is_array() || jo.size() != 2) fail(where + "'data_offsets' is not [begin, end]");
    uint64_t b, e;
    if (!json_u64(jo[0], &b) || !json_u64(jo[1], &e))
      fail(where + "'data_offsets' entries must be non-negative integers");
    if (b > e) fail(where + "data_offsets begin " + std::to_string(b) + " > end " + std::to_string(e));
    if (e > data_size)
      fail(where + "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
           ") out of bounds (data section is " + std::to_string(data_size) + " bytes)");
    const uint64_t want = numel * dtype_size(t.dtype);
    if (e - b != want)
      fail(where + "data_offsets span " + std::to_string(e - b) + " bytes but shape " +
           shape_str(t.shape) + " x " + dtype_name(t.dtype) + " needs " + std::to_string(want));
    t.data = data + b;
    t.nbytes = size_t(want);
    if (tensors->count(name))
      fail("safetensors file " + path + ": tensor '" + name + "' appears in more than one file");
    spans.push_back({b, e, name});
    tensors->emplace(name, std::move(t));
  }
  std::sort(spans.begin(), spans.end(), [](auto& x, auto& y) { return x.b < y.b || (x.b == y.b && x.e < y.e); });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].b < spans[i - 1].e)  // empty tensors (b == e) never overlap
      fail("safetensors file " + path + ": tensor '" + spans[i].name + "' overlaps tensor '" +
           spans[i - 1].name + "'");
}

}  // namespace

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path_or_dir,
                                                       const LoadOptions& opts) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->opts_ = opts;
  auto add_file = [&](const std::string& path) {
    auto m = std::make_unique<Mapping>();
    m->path = path;
    load_file(path, opts, &m->base, &m->size, &m->copy);
    const uint8_t* base = m->base;
    size_t size = m->size;
    f->maps_.push_back(std::move(m));
    parse_header(path, base, size, &f->tensors_, &f->metadata_);
  };

  std::string dir, index;
  if (is_dir(path_or_dir)) {
    dir = path_or_dir;
    const std::string single = dir + "/model.safetensors";
    if (file_exists(single)) {
      add_file(single);
      return f;
    }
    index = dir + "/model.safetensors.index.json";
    if (!file_exists(index))
      fail("no model.safetensors or model.safetensors.index.json in " + dir);
  } else if (path_or_dir.size() >= 11 &&
             path_or_dir.compare(path_or_dir.size() - 11, 11, ".index.json") == 0) {
    index = path_or_dir;
    auto p = index.find_last_of('/');
    dir = p == std::string::npos ? "." : index.substr(0, p);
  } else {
    add_file(path_or_dir);
    return f;
  }

  // Sharded: the index maps tensor -> shard file name (relative to the folder).
  json j;
  try {
    j = json::parse(read_file(index));
  } catch (const json::exception& e) {
    fail(index + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail(index + ": missing object 'weight_map'");
  std::map<std::string, std::string> wmap;
  std::map<std::string, std::string> first_tensor;  // shard -> a tensor naming it (for messages)
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) fail(index + ": weight_map entry '" + it.key() + "' is not a string");
    std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
      fail(index + ": tensor '" + it.key() + "' names an invalid shard file '" + shard + "'");
    wmap[it.key()] = shard;
    first_tensor.emplace(shard, it.key());
  }
  for (auto& [shard, tname] : first_tensor) {
    const std::string p = dir + "/" + shard;
    if (!file_exists(p))
      fail(index + ": shard " + p + " (holding tensor '" + tname + "') does not exist");
  }
  std::map<std::string, std::string> origin;  // tensor -> shard it was found in
  for (auto& [shard, tname] : first_tensor) {
    std::set<std::string> before;
    for (auto& kv : f->tensors_) before.insert(kv.first);
    add_file(dir + "/" + shard);
    for (auto& kv : f->tensors_)
      if (!before.count(kv.first)) origin[kv.first] = shard;
  }
  for (auto& [tname, shard] : wmap) {
    auto it = origin.find(tname);
    if (it == origin.end() || it->second != shard)
      fail(index + ": tensor '" + tname + "' is not in its shard " + dir + "/" + shard);
  }
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void write_safetensors(const std::string& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorOut*> order;
  for (auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->name < b->name; });
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  std::vector<uint64_t> sizes;
  for (size_t i = 0; i < order.size(); ++i) {
    const TensorOut& t = *order[i];
    if (t.name.empty() || t.name == "__metadata__")
      fail("write_safetensors " + path + ": invalid tensor name '" + t.name + "'");
    if (i && order[i - 1]->name == t.name)
      fail("write_safetensors " + path + ": duplicate tensor '" + t.name + "'");
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail("write_safetensors " + path + ": tensor '" + t.name + "' has a negative dimension");
      n *= uint64_t(d);
    }
    uint64_t nb = n * dtype_size(t.dtype);
    if (nb && !t.data) fail("write_safetensors " + path + ": tensor '" + t.name + "' has no data");
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + nb}}};
    off += nb;
    sizes.push_back(nb);
  }
  std::string hs = h.dump();
  hs.append((8 - hs.size() % 8) % 8, ' ');  // the format allows trailing spaces; keeps data 8-aligned
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(hs.size()) >> (8 * i));
  AtomicFile f(path);
  f.write(len, 8);
  f.write(hs.data(), hs.size());
  for (size_t i = 0; i < order.size(); ++i) f.write(order[i]->data, sizes[i]);
  f.commit();
}

void SafetensorsFile::release_pages(const void* p, size_t n) const {
  const auto* b = static_cast<const uint8_t*>(p);
  for (const auto& m : maps_) {
    if (!m->base || b < m->base || b + n > m->base + m->size) continue;
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (uintptr_t(b) + page - 1) / page * page, hi = uintptr_t(b + n) / page * page;
    if (lo < hi) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
    return;
  }
}

}  // namespace hymba
