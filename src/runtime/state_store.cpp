#include "runtime/state_store.h"

#include <atomic>
#include <cctype>
#include <cstring>
#include <mutex>

#ifdef HYMBA_HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif
#ifdef HYMBA_HAVE_OPENSSL
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#endif

#include "base/error.h"
#include "base/hash.h"
#include "io/files.h"

namespace hymba {

namespace {

constexpr char kMagic[8] = {'H', 'Y', 'M', 'B', 'A', 'S', 'T', '1'};

template <class T>
void put_pod(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

template <class T>
bool get_pod(const std::string& in, size_t& pos, T* v) {
  if (in.size() - pos < sizeof(T) || pos > in.size()) return false;
  std::memcpy(v, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return true;
}

std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace

std::string state_key(uint64_t model_tag, const std::vector<int32_t>& tokens) {
  const uint64_t h = tokens.empty() ? kFnv1a64Offset : fnv1a64(tokens.data(), tokens.size() * sizeof(int32_t));
  return "hymba:" + hex(model_tag) + ":" + std::to_string(tokens.size()) + ":" + hex(h);
}

std::string encode_state_entry(uint64_t model_tag, const std::vector<int32_t>& tokens, const SequenceState& s) {
  const std::string state = serialize_state(s);
  std::string out(kMagic, sizeof kMagic);
  put_pod(out, model_tag);
  put_pod(out, uint64_t(tokens.size()));
  if (!tokens.empty()) out.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(int32_t));
  put_pod(out, fnv1a64(state));
  out += state;
  return out;
}

bool decode_state_entry(const std::string& v, uint64_t model_tag, const std::vector<int32_t>& tokens, SequenceState& into) {
  size_t pos = sizeof kMagic;
  uint64_t tag = 0, n = 0, sum = 0;
  if (v.size() < pos || std::memcmp(v.data(), kMagic, sizeof kMagic) != 0) return false;
  if (!get_pod(v, pos, &tag) || tag != model_tag || !get_pod(v, pos, &n) || n != tokens.size()) return false;
  const size_t tb = tokens.size() * sizeof(int32_t);
  if (v.size() - pos < tb || (tb && std::memcmp(v.data() + pos, tokens.data(), tb) != 0)) return false;
  pos += tb;
  if (!get_pod(v, pos, &sum)) return false;
  const std::string_view state(v.data() + pos, v.size() - pos);
  if (fnv1a64(state) != sum) return false;
  SequenceState loaded = into;
  try {
    deserialize_state(loaded, std::string(state));
  } catch (const Error&) {
    return false;
  }
  // The checksum only catches damage: a forged entry must still be a state after exactly these tokens.
  if (loaded.n_pos != into.n_pos + int64_t(tokens.size())) return false;
  into = std::move(loaded);
  return true;
}

#ifdef HYMBA_HAVE_OPENSSL
bool state_mac_available() { return true; }
namespace {
std::string hmac_sha256(const std::string& key, std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HYMBA_CHECK(HMAC(EVP_sha256(), key.data(), int(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
                   data.size(), md, &len) != nullptr && len == kStateMacBytes,
              "HMAC-SHA256 failed (OpenSSL)");
  return std::string(reinterpret_cast<const char*>(md), len);
}
}  // namespace
std::string seal_state_entry(const std::string& mac_key, std::string value) {
  value += hmac_sha256(mac_key, value);
  return value;
}
std::optional<std::string> open_state_entry(const std::string& mac_key, const std::string& sealed) {
  if (sealed.size() < kStateMacBytes) return std::nullopt;
  const size_t n = sealed.size() - kStateMacBytes;
  const std::string mac = hmac_sha256(mac_key, std::string_view(sealed).substr(0, n));
  if (CRYPTO_memcmp(mac.data(), sealed.data() + n, kStateMacBytes) != 0) return std::nullopt;
  return sealed.substr(0, n);
}
#else
bool state_mac_available() { return false; }
std::string seal_state_entry(const std::string&, std::string) {
  throw Error("--state-store-key: this build has no OpenSSL (install libssl-dev and rebuild)");
}
std::optional<std::string> open_state_entry(const std::string&, const std::string&) {
  throw Error("--state-store-key: this build has no OpenSSL (install libssl-dev and rebuild)");
}
#endif

namespace {
class KeyedStore : public StateStore {
 public:
  KeyedStore(std::unique_ptr<StateStore> inner, std::string key) : inner_(std::move(inner)), key_(std::move(key)) {}
  void put(const std::string& key, const std::string& value) override { inner_->put(key, seal_state_entry(key_, value)); }
  std::optional<std::string> get(const std::string& key) override {
    auto v = inner_->get(key);
    if (!v) return v;
    auto opened = open_state_entry(key_, *v);
    if (!opened) ++rejected_;
    return opened;
  }
  int64_t errors() const override { return inner_->errors(); }
  int64_t rejected() const override { return rejected_; }

 private:
  std::unique_ptr<StateStore> inner_;
  std::string key_;
  std::atomic<int64_t> rejected_{0};
};
}  // namespace

std::unique_ptr<StateStore> keyed_state_store(std::unique_ptr<StateStore> inner, std::string mac_key) {
  HYMBA_CHECK(state_mac_available(), "--state-store-key: this build has no OpenSSL (install libssl-dev and rebuild)");
  HYMBA_CHECK(mac_key.size() >= 16, "--state-store-key: the key must be at least 16 bytes (e.g. `openssl rand -hex 32`)");
  return std::make_unique<KeyedStore>(std::move(inner), std::move(mac_key));
}

std::string read_state_store_key(const std::string& path) {
  std::string k;
  try {
    k = read_file(path);
  } catch (const Error& e) {
    throw Error(std::string("--state-store-key: ") + e.what());
  }
  while (!k.empty() && std::isspace(static_cast<unsigned char>(k.back()))) k.pop_back();
  HYMBA_CHECK(k.size() >= 16, "--state-store-key: " + path + " holds " + std::to_string(k.size()) +
                                  " bytes; the key must be at least 16 (e.g. `openssl rand -hex 32 > " + path + "`)");
  return k;
}

#ifdef HYMBA_HAVE_HIREDIS
namespace {

class RedisStore : public StateStore {
 public:
  RedisStore(std::string host, int port, int ttl, size_t max_bytes)
      : host_(std::move(host)), port_(port), ttl_(ttl), max_bytes_(max_bytes) {
    std::lock_guard<std::mutex> l(mu_);
    HYMBA_CHECK(connect(), "--state-store: cannot connect to redis at " + host_ + ":" + std::to_string(port_) +
                               (c_ && c_->errstr[0] ? std::string(": ") + c_->errstr : std::string()));
    auto* r = static_cast<redisReply*>(redisCommand(c_, "PING"));
    const bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
    HYMBA_CHECK(ok, "--state-store: redis at " + host_ + ":" + std::to_string(port_) + " does not answer PING");
  }
  ~RedisStore() override {
    if (c_) redisFree(c_);
  }

  void put(const std::string& key, const std::string& value) override {
    if (value.size() > max_bytes_) return;
    std::lock_guard<std::mutex> l(mu_);
    if (!connect()) return void(++errors_);
    auto* r = static_cast<redisReply*>(redisCommand(c_, "SET %b %b EX %d", key.data(), key.size(), value.data(),
                                                    value.size(), ttl_));
    done(r);
  }

  std::optional<std::string> get(const std::string& key) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!connect()) return ++errors_, std::nullopt;
    auto* r = static_cast<redisReply*>(redisCommand(c_, "GET %b", key.data(), key.size()));
    std::optional<std::string> out;
    if (r && r->type == REDIS_REPLY_STRING) out = std::string(r->str, r->len);
    done(r);
    return out;
  }

 private:
  // A connection, made again after a failure (redis restarted).
  bool connect() {
    if (c_ && c_->err == 0) return true;
    if (c_) redisFree(c_);
    const timeval tv{2, 0};
    c_ = redisConnectWithTimeout(host_.c_str(), port_, tv);
    if (!c_ || c_->err) return false;
    redisSetTimeout(c_, tv);
    return true;
  }
  void done(redisReply* r) {
    if (!r || r->type == REDIS_REPLY_ERROR) ++errors_;
    if (r) freeReplyObject(r);
  }

  std::mutex mu_;
  std::string host_;
  int port_, ttl_;
  size_t max_bytes_;
  redisContext* c_ = nullptr;
};

}  // namespace
#endif

std::unique_ptr<StateStore> connect_state_store(const std::string& url, int ttl_seconds, size_t max_bytes,
                                                const std::string& mac_key) {
  const std::string scheme = "redis://";
  HYMBA_CHECK(url.compare(0, scheme.size(), scheme) == 0, "--state-store: expected redis://HOST:PORT, got '" + url + "'");
  const std::string hp = url.substr(scheme.size());
  const size_t colon = hp.rfind(':');
  std::string host = hp.substr(0, colon);
  int port = 6379;
  if (colon != std::string::npos) {
    const std::string p = hp.substr(colon + 1);
    HYMBA_CHECK(!p.empty() && p.size() <= 5 && p.find_first_not_of("0123456789") == std::string::npos &&
                    std::stoi(p) >= 1 && std::stoi(p) <= 65535,
                "--state-store: bad port in '" + url + "'");
    port = std::stoi(p);
  }
  HYMBA_CHECK(!host.empty(), "--state-store: no host in '" + url + "'");
  HYMBA_CHECK(ttl_seconds > 0, "--state-store-ttl must be > 0");
  HYMBA_CHECK(mac_key.empty() || (state_mac_available() && mac_key.size() >= 16),
              state_mac_available() ? "--state-store-key: the key must be at least 16 bytes"
                                    : "--state-store-key: this build has no OpenSSL (install libssl-dev and rebuild)");
#ifdef HYMBA_HAVE_HIREDIS
  std::unique_ptr<StateStore> store = std::make_unique<RedisStore>(host, port, ttl_seconds, max_bytes);
  return mac_key.empty() ? std::move(store) : keyed_state_store(std::move(store), mac_key);
#else
  (void)max_bytes;
  throw Error("--state-store: this build has no Redis client (install libhiredis-dev and rebuild)");
#endif
}

}  // namespace hymba
