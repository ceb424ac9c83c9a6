#!/usr/bin/env python3
"""many.sh's set-up and measurements: loads the licences in LICDIR on the
first member, allocates ACCOUNTS accounts spread over the services through
it, waits for every member to hold them, then reports each member's
/metrics size, demand report size, idle gossip and RSS, and what the data
directories grew by over 12 s (a ledger interval of 10 s and more).

    many_setup.py LICDIR TOKEN SERVICES ACCOUNTS ADMIN_URLS PIDS DATA_DIRS
"""
import http.client
import json
import os
import sys
import time
import urllib.parse


def conn(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def request(c, token, method, path, body=None):
    c.request(method, path, body=body, headers={"Authorization": "Bearer " + token})
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise RuntimeError("%s %s: %d %s" % (method, path, r.status, data[:200]))
    return data


def metrics(url):
    c = conn(url)
    c.request("GET", "/metrics")
    return c.getresponse().read().decode()


def metric(text, name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def await_all(admins, token, path, done, what):
    """Waits, at most 300 s in all, until GET path answers what done accepts
    on every member."""
    deadline = time.time() + 300
    for url in admins:
        c = conn(url)
        while True:
            try:
                if done(json.loads(request(c, token, "GET", path))):
                    break
            except RuntimeError:
                pass
            if time.time() > deadline:
                raise SystemExit("%s did not get %s within 300 s" % (url, what))
            time.sleep(0.2)


def idle_window(admins, seconds, sample):
    """Each member's /metrics and sample(i) before and after seconds of
    idling: (before, after, samples before, samples after)."""
    before, s0 = [metrics(u) for u in admins], [sample(i) for i in range(len(admins))]
    time.sleep(seconds)
    return before, [metrics(u) for u in admins], s0, [sample(i) for i in range(len(admins))]


def idle(before, after, seconds):
    """What a member's /metrics before and after an idle window of seconds
    say: its series, its mean demand report's bytes and the gossip bytes
    it sent a second."""
    series = sum(1 for l in after.splitlines() if l and not l.startswith("#"))
    delta = lambda name: metric(after, name) - metric(before, name)
    report = delta("capsgate_cluster_report_bytes_sum") / max(delta("capsgate_cluster_report_bytes_count"), 1)
    return series, report, delta('capsgate_gossip_bytes_total{direction="sent"}') / seconds


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def rss(pid):
    with open("/proc/%s/status" % pid) as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))


def main():
    licdir, token, services, accounts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    admins, pids, dirs = sys.argv[5].split(","), sys.argv[6].split(","), sys.argv[7].split(",")
    c = conn(admins[0])
    t0 = time.time()
    for i, name in enumerate(sorted(os.listdir(licdir))):
        with open(os.path.join(licdir, name), "rb") as f:
            request(c, token, "POST", "/v1/licenses", f.read())
        if (i + 1) % 100 == 0:
            print("  %d licences loaded, %.1f s" % (i + 1, time.time() - t0), flush=True)
    t1 = time.time()
    for a in range(accounts):
        s = "s%012d" % (a % services)
        request(c, token, "PUT", "/v1/services/%s/accounts/a%012d" % (s, a), json.dumps({"tokens": 1000000, "overage": "none"}))
        if (a + 1) % 1000 == 0:
            print("  %d accounts allocated, %.1f s" % (a + 1, time.time() - t1), flush=True)
    t2 = time.time()
    print("loaded %d licences on n1 in %.1f s; allocated %d accounts through n1 in %.1f s" % (services, t1 - t0, accounts, t2 - t1))
    # every member holds every licence and allocation
    last = "s%012d" % (services - 1)
    await_all(admins, token, "/v1/services/%s/accounts" % last,
              lambda got: len(got.get("accounts", got) if isinstance(got, dict) else got) >= accounts // services, last + "'s accounts")
    print("every member holds them %.1f s after the last allocation" % (time.time() - t2))
    before, after, size0, size1 = idle_window(admins, 12, lambda i: du(dirs[i]))
    for i, u in enumerate(admins):
        m = after[i]
        series, rb, gossip = idle(before[i], m, 12)
        streamed = metric(m, "capsgate_cluster_reports_streamed_total")
        errors = metric(m, "capsgate_cluster_report_errors_total")
        print("n%d: /metrics %d bytes, %d series; demand report %.0f bytes (%d sent over TCP, %d failed); gossip sent %.0f B/s idle; data dir +%d bytes in 12 s (%d in all); RSS %d MiB"
              % (i + 1, len(m), series, rb, streamed, errors, gossip, size1[i] - size0[i], size1[i], rss(pids[i]) >> 20))


if __name__ == "__main__":
    main()
