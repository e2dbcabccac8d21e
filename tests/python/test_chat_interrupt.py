"""Ctrl-C in `hymba chat` (issue 11.13), as in llama.cpp's interactive mode: while a reply is
generated it stops that reply and the chat goes on (the next turn is answered); at the prompt it
exits; Ctrl-D exits cleanly."""
import os
import select
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

MODEL = os.path.join(U.SRC, "models", "hymba-kjv")


def read_until(p, pred, timeout):
    """Reads stdout until pred(text so far) or the timeout; returns the text."""
    buf = b""
    end = time.time() + timeout
    while time.time() < end and not pred(buf.decode(errors="replace")):
        r, _, _ = select.select([p.stdout], [], [], 0.1)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace")


def start():
    return subprocess.Popen([U.BIN, "chat", "-m", MODEL, "-n", "100000", "--ignore-eos", "--temp", "0.8",
                             "--threads", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def main():
    R = U.Results()
    p = start()
    try:
        read_until(p, lambda t: t.endswith("> "), 60)
        p.stdin.write(b"Who begat Jacob?\n")
        p.stdin.flush()
        got = read_until(p, lambda t: len(t) > 200, 60)  # a reply that would run 100000 tokens
        R.check("a long reply is streaming", len(got) > 200, repr(got[-80:]))
        p.send_signal(signal.SIGINT)
        after = read_until(p, lambda t: t.endswith("> "), 60)
        R.check("Ctrl-C stops the reply and gives the prompt back", p.poll() is None and after.endswith("> "),
                repr(after[-80:]))
        p.stdin.write(b"And what of Esau?\n")
        p.stdin.flush()
        got = read_until(p, lambda t: len(t) > 100, 60)
        R.check("the chat goes on: the next turn is answered", p.poll() is None and len(got) > 100,
                repr(got[-80:]))
        p.send_signal(signal.SIGINT)
        read_until(p, lambda t: t.endswith("> "), 60)
        p.send_signal(signal.SIGINT)  # at the prompt: exit
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        R.check("Ctrl-C at the prompt exits", p.poll() is not None, f"exit {p.poll()}")
        err = p.stderr.read().decode(errors="replace")
        R.check("the interrupted reply is reported as such", "interrupted" in err, err[-300:])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()

    p = start()
    try:
        read_until(p, lambda t: t.endswith("> "), 60)
        p.stdin.close()  # Ctrl-D
        rc = p.wait(timeout=30)
        R.check("Ctrl-D exits with 0", rc == 0, f"exit {rc}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
