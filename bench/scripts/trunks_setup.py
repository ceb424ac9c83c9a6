#!/usr/bin/env python3
"""trunks.sh's set-up and measurements: sets KEYS trunk keys' limits of
service voice through the first member, waits for every member to hold
the last, then reports each member's /metrics size, demand report size,
idle gossip and CPU over 12 s, and RSS.

    trunks_setup.py TOKEN KEYS KEY_CAPS ADMIN_URLS PIDS
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from many_setup import conn, metric, metrics, request, rss  # noqa: E402


def cpu(pid):
    with open("/proc/%s/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    token, keys, caps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    admins, pids = sys.argv[4].split(","), sys.argv[5].split(",")
    c = conn(admins[0])
    t0 = time.time()
    for k in range(keys):
        request(c, token, "PUT", "/v1/services/voice/limits/k%012d" % k, json.dumps({"caps": caps, "sessions": 1000}))
        if (k + 1) % 2000 == 0:
            print("  %d keys set, %.1f s" % (k + 1, time.time() - t0), flush=True)
    t1 = time.time()
    print("set %d keys through n1 in %.1f s" % (keys, t1 - t0))
    last = "k%012d" % (keys - 1)
    deadline = time.time() + 300
    for url in admins:
        cc = conn(url)
        while True:
            try:
                got = json.loads(request(cc, token, "GET", "/v1/services/voice/limits/" + last))
                if got.get("node", {}).get("caps") is not None:
                    break
            except RuntimeError:
                pass
            if time.time() > deadline:
                raise SystemExit("%s did not get %s within 300 s" % (url, last))
            time.sleep(0.2)
    print("every member enforces its part of the last key %.1f s after it was set" % (time.time() - t1))
    before = [metrics(u) for u in admins]
    cpu0 = [cpu(p) for p in pids]
    time.sleep(12)
    after = [metrics(u) for u in admins]
    cpu1 = [cpu(p) for p in pids]
    for i, u in enumerate(admins):
        m = after[i]
        series = sum(1 for l in m.splitlines() if l and not l.startswith("#"))
        n = metric(m, "capsgate_cluster_report_bytes_count") - metric(before[i], "capsgate_cluster_report_bytes_count")
        rb = (metric(m, "capsgate_cluster_report_bytes_sum") - metric(before[i], "capsgate_cluster_report_bytes_sum")) / max(n, 1)
        gossip = (metric(m, 'capsgate_gossip_bytes_total{direction="sent"}') - metric(before[i], 'capsgate_gossip_bytes_total{direction="sent"}')) / 12
        print("n%d: /metrics %d bytes, %d series; demand report %.0f bytes; gossip sent %.0f B/s idle; CPU %.1f %% of a core idle; RSS %d MiB"
              % (i + 1, len(m), series, rb, gossip, 100 * (cpu1[i] - cpu0[i]) / 12, rss(pids[i]) >> 20))


if __name__ == "__main__":
    main()
