"""Run deploy/ray/serve.yaml on one machine, loopback only: what `bash start.sh --ray` does.

`serve run` would start a local Ray whose node (and proxy) bind to the machine's own address. This launcher
starts Ray with node IP 127.0.0.1 and no dashboard, unless `RAY_ADDRESS` names a cluster to join, then applies
the same config file through Serve's Python API:

- `http_options` and `proxy_location` -> `serve.start`;
- each application's `runtime_env.env_vars` (the `UNIVERSAL_RUNTIME_*` settings) -> the job's runtime env, which
  every replica inherits;
- the deployments' CPU asks (written for cluster nodes) -> as many logical CPUs for the local Ray, so every
  replica of the config starts on one machine, sharing its cores;
- `args` plus the `UniversalRuntime` entry of `deployments:` (replicas, autoscaling, actor options, ...) ->
  `build(...)`; the `Gateway` entry's `num_replicas` -> `gateway_replicas`.

    python -m deploy.ray.run [deploy/ray/serve.yaml]
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from deploy.ray.local import init_local

DEFAULT_CONFIG = Path(__file__).with_name("serve.yaml")


def plan(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """(ray.init kwargs, serve.start kwargs, [(build args, serve.run kwargs)]) for a Serve config."""
    env: dict[str, str] = {}
    apps = []
    for app in config.get("applications", []):
        env.update({k: str(v) for k, v in ((app.get("runtime_env") or {}).get("env_vars") or {}).items()})
        args = dict(app.get("args") or {})
        for dep in app.get("deployments") or []:
            options = {k: v for k, v in dep.items() if k != "name"}
            if dep.get("name") == "UniversalRuntime":
                args.update(options)
            elif dep.get("name") == "Gateway" and "num_replicas" in options:
                args["gateway_replicas"] = options["num_replicas"]
        apps.append((args, {"name": app.get("name", "default"), "route_prefix": app.get("route_prefix", "/")}))
    address = os.environ.get("RAY_ADDRESS")
    init: dict[str, Any] = {"address": address} if address else {
        # the config's CPU asks are for cluster nodes; one machine gets as many logical CPUs as they add up to,
        # so every replica starts (they share the cores)
        "num_cpus": max(os.cpu_count() or 1, math.ceil(_cpus_asked(config)))}
    init["runtime_env"] = {"env_vars": env}
    http = config.get("http_options") or {}
    start = {"http_options": {"host": http.get("host", "127.0.0.1"), "port": int(http.get("port", 8000))},
             "proxy_location": config.get("proxy_location", "HeadOnly")}
    return init, start, apps


def _cpus_asked(config: dict[str, Any]) -> float:
    """Logical CPUs the config's deployments ask for at start (replicas x num_cpus)."""
    total = 0.0
    for app in config.get("applications", []):
        for dep in app.get("deployments") or []:
            scaling = dep.get("autoscaling_config") or {}
            replicas = dep.get("num_replicas") or scaling.get("initial_replicas") or scaling.get("min_replicas") or 1
            total += float(replicas) * float((dep.get("ray_actor_options") or {}).get("num_cpus", 1))
    return total


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:] or [str(DEFAULT_CONFIG)])[0])
    init, start, apps = plan(yaml.safe_load(path.read_text()))
    if "address" in init:
        import ray

        ray.init(**init)
    else:
        init_local(**init)
    import ray
    from ray import serve

    from deploy.ray.app import build

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(**start)
        for args, run in apps:
            serve.run(build(args), **run)
        host, port = start["http_options"]["host"], start["http_options"]["port"]
        print(f"[ray] serving {path} on http://{host}:{port} (Ctrl-C stops)", flush=True)
        stop.wait()
    finally:
        serve.shutdown()  # replicas drain: graceful_shutdown_timeout_s lets running requests finish
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
