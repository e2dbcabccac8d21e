// Connection plumbing for `hymba server` that Debian's cpp-httplib (0.11) leaves to the caller:
// a connection-thread pool that grows on demand (so slow or idle clients cannot starve /health),
// finding a request's socket, and noticing that its client hung up.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include <httplib.h>

namespace hymba::cli {

// Threads are started when a connection arrives and none is idle, up to `max_threads`; past
// that, connections wait for a free thread. Outlives the httplib::Server (see queue()).
class ConnectionPool {
 public:
  explicit ConnectionPool(size_t max_threads) : max_(max_threads) {}
  void enqueue(std::function<void()> fn);
  // Stops taking work and waits up to `grace` for the running connections to end. Returns the
  // number still running then (their threads are left to the process exit).
  size_t shutdown(std::chrono::milliseconds grace);
  size_t busy() const;
  // A TaskQueue for httplib::Server::new_task_queue (httplib deletes it; the pool stays).
  httplib::TaskQueue* queue();

 private:
  void work();
  const size_t max_;
  mutable std::mutex mu_;
  std::condition_variable cv_, ended_;
  std::deque<std::function<void()>> jobs_;
  size_t live_ = 0, idle_ = 0;
  bool stop_ = false;
};

// The accepted socket a request came on (matched by its local and remote address and port), or
// -1. Used only to poll it: the connection belongs to httplib.
int request_socket(const httplib::Request& q);
// Whether the peer has closed (or reset) the connection, without consuming any data.
bool peer_closed(int fd);

}  // namespace hymba::cli
