#!/usr/bin/env python3
"""farm.sh's generator: SUBS subscribers REGISTER through randomly chosen
nodes, then each again through another node; the farm's count (the sum of
every node's subscribers_used) must settle at SUBS. Prints one JSON object.

    farm_load.py SUBS RESP_ADDRS ADMIN_URLS   (addresses comma-separated)
"""
import json
import random
import socket
import sys
import time
import urllib.request

CHUNK = 2000  # pipelined REGISTERs per node per round


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def reply_end(b, pos):
    """End of the RESP reply starting at pos, or -1 if b holds less."""
    e = b.find(b"\r\n", pos)
    if e < 0:
        return -1
    t = b[pos:pos + 1]
    if t in (b"+", b"-", b":"):
        return e + 2
    if t == b"$":
        n = int(b[pos + 1:e])
        end = e + 2 + max(n, 0) + (2 if n >= 0 else 0)
        return end if len(b) >= end else -1
    if t == b"*":
        p = e + 2
        for _ in range(max(int(b[pos + 1:e]), 0)):
            p = reply_end(b, p)
            if p < 0:
                return -1
        return p
    raise ValueError("not RESP: %r" % b[pos:pos + 40])


class Node:
    def __init__(self, addr, admin):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.settimeout(60)
        self.admin = admin
        self.buf = b""

    def replies(self, count):
        """Reads count replies; returns them raw."""
        out = []
        pos = 0
        while len(out) < count:
            end = reply_end(self.buf, pos) if pos < len(self.buf) else -1
            if end < 0:
                self.buf = self.buf[pos:]
                pos = 0
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise EOFError("connection closed")
                self.buf += chunk
                continue
            out.append(self.buf[pos:end])
            pos = end
        self.buf = self.buf[pos:]
        return out

    def do(self, *args):
        self.sock.sendall(encode(*args))
        return self.replies(1)[0]

    def quota(self, field):
        parts = self.do("QUOTA", "voice").split(b"\r\n")
        i = parts.index(field.encode())
        v = parts[i + 1]
        return int(v[1:]) if v.startswith(b":") else int(parts[i + 2])

    def metric(self, name):
        total = 0.0
        with urllib.request.urlopen(self.admin + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name):
                    total += float(line.rsplit(" ", 1)[1])
        return total


def gossip_sent(nodes):
    return [n.metric('capsgate_gossip_bytes_total{direction="sent"}') for n in nodes]


def rates(before, after, secs):
    r = [(b - a) / secs for a, b in zip(before, after)]
    return {"mean_bytes_per_s": round(sum(r) / len(r)), "max_bytes_per_s": round(max(r))}


def register_pass(nodes, targets):
    """REGISTERs subscriber i through nodes[targets[i]], pipelined CHUNK at a
    time per node, round after round; returns (seconds, refused)."""
    per = [[] for _ in nodes]
    for i, k in enumerate(targets):
        per[k].append(i)
    t0, refused = time.time(), 0
    for off in range(0, max(len(p) for p in per), CHUNK):
        sent = []
        for k, node in enumerate(nodes):
            part = per[k][off:off + CHUNK]
            if part:
                node.sock.sendall(b"".join(encode("REGISTER", "voice", "sip:sub%d@farm.example" % i, "TTL", 7200) for i in part))
            sent.append(len(part))
        for node, count in zip(nodes, sent):
            for r in node.replies(count):
                if not r.startswith(b"*4\r\n:1\r\n"):  # a decision: admitted, reason, retry, remaining
                    refused += 1
    return time.time() - t0, refused


def settle(nodes, want, timeout):
    """Polls the farm's count until it is want and stays so for 2 s."""
    t0, at, last = time.time(), None, None
    while time.time() - t0 < timeout:
        last = sum(n.quota("subscribers_used") for n in nodes)
        if last == want:
            at = at or time.time()
            if time.time() - at >= 2:
                return round(at - t0, 2), last
        else:
            at = None
        time.sleep(0.1)
    return None, last


def main():
    subs = int(sys.argv[1])
    nodes = [Node(a, u) for a, u in zip(sys.argv[2].split(","), sys.argv[3].split(","))]
    n = len(nodes)
    rng = random.Random(17)
    res = {"nodes": n, "subscribers": subs}
    g0 = gossip_sent(nodes)
    time.sleep(10)
    g1 = gossip_sent(nodes)
    res["gossip_idle"] = rates(g0, g1, 10)
    first = [rng.randrange(n) for _ in range(subs)]
    res["first_pass_s"], res["first_pass_refused"] = register_pass(nodes, first)
    again = [(k + 1 + rng.randrange(n - 1)) % n if n > 1 else 0 for k in first]
    res["second_pass_s"], res["second_pass_refused"] = register_pass(nodes, again)
    g2 = gossip_sent(nodes)
    res["gossip_during_load"] = rates(g1, g2, res["first_pass_s"] + res["second_pass_s"] + 10)
    res["settled_after_s"], res["counted"] = settle(nodes, subs, 120)
    res["forward_dropped"] = sum(nd.metric("capsgate_gossip_forward_dropped_total") for nd in nodes)
    g3 = gossip_sent(nodes)
    time.sleep(10)
    g4 = gossip_sent(nodes)
    res["gossip_idle_after"] = rates(g3, g4, 10)
    res["held_per_node"] = [nd.quota("subscribers_used") for nd in nodes]
    print(json.dumps(res))
    sys.exit(0 if res["counted"] == subs else 1)


if __name__ == "__main__":
    main()
