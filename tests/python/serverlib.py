"""Starting and stopping `hymba server` in tests: a free loopback port (--port 0, read from the
first stderr line), bounded waits, and always stopped (SIGTERM, then SIGKILL)."""
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import testlib as U

MODEL = U.TOKENIZER  # the bundled model folder


class Server:
    def __init__(self, *args, model=MODEL):
        self.proc = subprocess.Popen([U.BIN, "server", "-m", model, "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True)
        self.log, self.port, self.first = [], None, ""
        for _ in range(20):  # warnings may come first; EOF if it fails to start
            line = self.proc.stderr.readline()
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m or not line:
                self.first = line if m else "".join(self.log)
                self.port = int(m.group(1)) if m else None
                break
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def request(self, method, path, body=None, headers=None, timeout=120):
        return request(self.port, method, path, body, headers, timeout)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Exit status, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def request(port, method, path, body=None, headers=None, timeout=120):
    """(status, parsed JSON or raw text, response headers)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    raw = r.read().decode()
    hdrs = dict(r.getheaders())
    c.close()
    try:
        return r.status, json.loads(raw), hdrs
    except ValueError:
        return r.status, raw, hdrs


def sse(port, path, body, timeout=120):
    """The data: payloads of a streamed response."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, body=json.dumps(dict(body, stream=True)), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    events = []
    try:
        for line in r:  # line by line, so that what came before a broken connection is kept
            line = line.decode().rstrip("\r\n")
            if line.startswith("data: "):
                events.append(line[6:])
    except (OSError, http.client.HTTPException) as e:
        events.append(f"<connection broken: {e!r}>")
    c.close()
    return events


def metrics(port, headers=None):
    """Prometheus text -> {name{labels}: value}."""
    st, text, _ = request(port, "GET", "/metrics", headers=headers)
    out = {}
    if st == 200:
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def resp(port, *args):
    """One Redis command over RESP; returns the reply (str, int, list or None)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"".join([f"*{len(args)}\r\n".encode()] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in
                                                           (x if isinstance(x, bytes) else str(x).encode() for x in args)]))
    f = s.makefile("rb")

    def read():
        line = f.readline().rstrip(b"\r\n")
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-"):
            return rest.decode()
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2]
        if t == b"*":
            return [read() for _ in range(int(rest))]
        raise RuntimeError(f"bad reply {line!r}")
    try:
        return read()
    finally:
        s.close()


def start_redis(res):
    """A started Redis (use it in a with block), or None after a failed check of res: setup.sh
    installs redis-server, so its absence fails the test rather than skipping it."""
    r = Redis()
    if res.check("redis-server is installed (scripts/setup.sh installs it) and answers", r.installed and r.up):
        return r
    r.__exit__()
    return None


class Redis:
    """A throw-away redis-server (Debian's) on a free loopback port; .up says whether it answers,
    .url is for --state-store. None of it when redis-server is not installed (.installed False)."""

    def __init__(self):
        self.installed, self.up, self.proc = bool(shutil.which("redis-server")), False, None
        if not self.installed:
            return
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--daemonize", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.up = resp(self.port, "PING") == "PONG"
                break
            except OSError:
                time.sleep(0.1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
