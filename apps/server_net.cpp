#include "server_net.h"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>
#include <string>
#include <thread>

namespace hymba::cli {

void ConnectionPool::enqueue(std::function<void()> fn) {
  std::lock_guard<std::mutex> l(mu_);
  if (stop_) return;  // only after the listener stopped; the process is about to end
  jobs_.push_back(std::move(fn));
  if (jobs_.size() > idle_ && live_ < max_) {  // idle threads not yet woken are spoken for
    ++live_;
    std::thread([this] { work(); }).detach();
  } else {
    cv_.notify_one();
  }
}

void ConnectionPool::work() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    ++idle_;
    cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
    --idle_;
    if (jobs_.empty()) break;  // stopping and nothing left
    auto fn = std::move(jobs_.front());
    jobs_.pop_front();
    l.unlock();
    fn();
    l.lock();
  }
  --live_;
  ended_.notify_all();
}

size_t ConnectionPool::shutdown(std::chrono::milliseconds grace) {
  std::unique_lock<std::mutex> l(mu_);
  stop_ = true;
  cv_.notify_all();
  ended_.wait_for(l, grace, [&] { return live_ == 0; });
  return live_;
}

size_t ConnectionPool::busy() const {
  std::lock_guard<std::mutex> l(mu_);
  return live_ - idle_;
}

httplib::TaskQueue* ConnectionPool::queue() {
  struct Proxy : httplib::TaskQueue {
    explicit Proxy(ConnectionPool* p) : p(p) {}
    void enqueue(std::function<void()> fn) override { p->enqueue(std::move(fn)); }
    void shutdown() override {}  // the server's owner shuts the pool down, with a bound
    ConnectionPool* p;
  };
  return new Proxy(this);
}

namespace {

int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// The numeric host, as httplib spells remote_addr.
std::string host_of(const sockaddr_storage& a, socklen_t len) {
  char h[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, h, sizeof h, nullptr, 0, NI_NUMERICHOST) != 0) return {};
  return h;
}

}  // namespace

int request_socket(const httplib::Request& q) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = std::atoi(e->d_name);
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 || port_of(local) != q.local_port) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0 || port_of(peer) != q.remote_port) continue;
    if (host_of(peer, pl) == q.remote_addr) {
      found = fd;
      break;
    }
  }
  closedir(d);
  return found;
}

bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  char c;
  return (p.revents & POLLIN) && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

}  // namespace hymba::cli
