"""Turns `docker-compose config` output into a loopback-only variant.

Every service gets the host's network (network_mode: host) and an
extra_hosts entry mapping every service name to 127.0.0.1, so addresses like
broker:7600 keep working; published ports and networks are dropped (they
conflict with host networking), and builds use the host network too.

    docker-compose -f deploy/docker-compose.yml config | python3 hostify.py > ci.yml
"""
import sys

import yaml


def main():
    cfg = yaml.safe_load(sys.stdin)
    services = cfg.get("services") or {}
    names = list(services)
    for svc in services.values():
        for key in ("ports", "networks", "links", "hostname"):
            svc.pop(key, None)
        svc["network_mode"] = "host"
        hosts = svc.get("extra_hosts") or {}
        if isinstance(hosts, list):
            hosts = dict(h.split(":", 1) for h in hosts)
        for other in names:
            hosts.setdefault(other, "127.0.0.1")
        svc["extra_hosts"] = [f"{h}:{ip}" for h, ip in hosts.items()]
        if isinstance(svc.get("build"), dict):
            svc["build"]["network"] = "host"
        elif "build" in svc:
            svc["build"] = {"context": svc["build"], "network": "host"}
    cfg.pop("networks", None)
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
