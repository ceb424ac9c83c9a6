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
from many_setup import await_all, conn, idle, idle_window, metric, request, rss  # noqa: E402


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
    await_all(admins, token, "/v1/services/voice/limits/" + last, lambda got: got.get("node", {}).get("caps") is not None, last)
    print("every member enforces its part of the last key %.1f s after it was set" % (time.time() - t1))
    before, after, cpu0, cpu1 = idle_window(admins, 12, lambda i: cpu(pids[i]))
    for i, u in enumerate(admins):
        m = after[i]
        series, rb, gossip = idle(before[i], m, 12)
        planned = (metric(m, "capsgate_cluster_planned_total") - metric(before[i], "capsgate_cluster_planned_total")) / 12
        plans = metric(m, "capsgate_cluster_plan_seconds_count") - metric(before[i], "capsgate_cluster_plan_seconds_count")
        plan_ms = 1000 * (metric(m, "capsgate_cluster_plan_seconds_sum") - metric(before[i], "capsgate_cluster_plan_seconds_sum")) / max(plans, 1)
        print("n%d: /metrics %d bytes, %d series; demand report %.0f bytes; gossip sent %.0f B/s idle; CPU %.1f %% of a core idle; "
              "%.1f plans a second of %.2f ms, %.0f keys and licences planned a second; RSS %d MiB"
              % (i + 1, len(m), series, rb, gossip, 100 * (cpu1[i] - cpu0[i]) / 12, plans / 12, plan_ms, planned, rss(pids[i]) >> 20))


if __name__ == "__main__":
    main()
