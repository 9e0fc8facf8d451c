#!/usr/bin/env python3
"""qga_ops: the engine benchmark's qemu-guest-agent side.

    qga_ops.py SOCKET PATH N [GAP_MS]

N x (guest-file-open, guest-file-read until EOF, guest-file-close) of PATH through the
agent's virtio-serial socket, on one connection; prints the same JSON as guest_ops.
"""
import json
import socket
import sys
import time


class Agent:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""
        # guest-sync-delimited resynchronises a connection that may hold stale output.
        self.call("guest-sync-delimited", {"id": 4242}, expect=4242)

    def call(self, name, args=None, expect=None):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("qemu-ga closed the connection")
                self.buf += chunk
                continue
            line, self.buf = self.buf[:nl], self.buf[nl + 1:]
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            reply = json.loads(line)
            if "error" in reply:
                raise OSError(reply["error"].get("desc", "qemu-ga error"))
            if expect is not None and reply.get("return") != expect:
                continue
            return reply.get("return")


def main():
    sock, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gap = int(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0
    agent = Agent(sock)
    times, size = [], 0
    for _ in range(n):
        time.sleep(gap)
        t0 = time.monotonic()
        handle = agent.call("guest-file-open", {"path": path, "mode": "r"})
        size = 0
        while True:
            r = agent.call("guest-file-read", {"handle": handle, "count": 65536})
            size += r["count"]
            if r["eof"] or r["count"] == 0:
                break
        agent.call("guest-file-close", {"handle": handle})
        times.append((time.monotonic() - t0) * 1e6)
    times.sort()
    print(json.dumps({"op": "qga-cat" if not gap else "qga-catgap", "n": n, "median_us": round(times[n // 2], 1),
                      "p90_us": round(times[min(n - 1, n * 9 // 10)], 1),
                      "min_us": round(times[0], 1),
                      "mean_us": round(sum(times) / n, 1), "extra": size}))


if __name__ == "__main__":
    main()
