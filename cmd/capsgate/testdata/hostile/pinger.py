"""Sends PING to host:port every 10 ms for the given seconds on one
connection, from its own process (so that the load a test makes in its own
runtime does not delay it), and prints each answer's latency in
microseconds, one a line. Exits 1 on a wrong or missing answer."""
import socket
import sys
import time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(5)
end = time.monotonic() + seconds
nxt = time.monotonic()
out = []
while time.monotonic() < end and len(out) < 100000:
    nxt += 0.01
    t0 = time.perf_counter()
    s.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            sys.exit("connection closed")
        got += chunk
    if got != b"+PONG\r\n":
        sys.exit("answered %r" % got)
    out.append(int((time.perf_counter() - t0) * 1e6))
    time.sleep(max(0.0, nxt - time.monotonic()))
print("\n".join(map(str, out)))
