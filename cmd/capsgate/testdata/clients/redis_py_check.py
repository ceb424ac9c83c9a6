"""Drives capsgate with redis-py as an application would, and prints what
the client library made of each reply as one JSON object, for
clients_e2e_test.go to compare. Usage: redis_py_check.py HOST PORT"""
import json
import sys

import redis


def pairs(flat):
    return dict(zip(flat[0::2], flat[1::2]))


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    r = redis.Redis(host=host, port=port, client_name="py-check", decode_responses=True,
                    socket_timeout=10)
    out = {"version": redis.__version__}
    out["ping"] = r.ping()
    info = r.info()
    out["info"] = {k: info.get(k) for k in ("redis_version", "loading", "connected_clients",
                                            "role", "services", "service_demo")}
    out["info_services"] = r.info("services")
    out["info_everything"] = sorted(r.info("everything").keys())
    out["command_count"] = r.command_count()
    out["command"] = r.command()["admit"]
    out["client_info"] = r.client_info()
    out["client_list"] = r.client_list()
    out["client_id"] = r.client_id()
    out["client_getname"] = r.client_getname()
    out["admit"] = r.execute_command("ADMIT", "demo", "CALL", "py-1")
    out["quota"] = pairs(r.execute_command("QUOTA", "demo"))
    out["info_after"] = r.info("services")["service_demo"]
    out["release"] = r.execute_command("RELEASE", "demo", "py-1")
    out["release_again"] = r.execute_command("RELEASE", "demo", "py-1")
    pipe = r.pipeline(transaction=False)
    pipe.execute_command("ADMIT", "demo", "PRIORITY", "emergency")
    pipe.ping()
    pipe.info("persistence")
    out["pipeline"] = pipe.execute()
    tx = r.pipeline()  # transactional: MULTI ... EXEC
    tx.execute_command("ADMIT", "demo", "PRIORITY", "emergency")
    tx.ping()
    out["transaction"] = tx.execute()
    big = r.pipeline()  # 1,000 commands in one MULTI ... EXEC
    for _ in range(1000):
        big.execute_command("ADMIT", "demo", "PRIORITY", "emergency")
    res = big.execute()
    out["transaction_1000"] = [len(res), sum(1 for d in res if d[0] == 1)]
    authed = redis.Redis(host=host, port=port, username="default", password="anything",
                         decode_responses=True, socket_timeout=10)
    out["auth_default_user"] = authed.ping()
    print(json.dumps(out, sort_keys=True))


main()
