"""Starting and stopping `hymba server` in tests: a free loopback port (--port 0, read from the
first stderr line), bounded waits, and always stopped (SIGTERM, then SIGKILL)."""
import http.client
import json
import re
import signal
import subprocess
import threading

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
