"""A Ray cluster on this one machine that binds to loopback only (node, GCS, raylet, Serve proxy)."""

from __future__ import annotations

import os
import sys
from typing import Any

LOOPBACK = "127.0.0.1"
# Ray on Linux replaces a loopback node address with the machine's own address (so other nodes could reach it);
# with this switch off, as Ray does on macOS / Windows, every Ray process keeps 127.0.0.1.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Keep the Ray processes started from here on 127.0.0.1 (the env is inherited by raylet and workers)."""
    os.environ[_CLUSTER_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray already imported: its constant was read at import time
        constants.ENABLE_RAY_CLUSTER = False


def init_local(**kwargs: Any) -> None:
    """`ray.init` of a new local cluster on 127.0.0.1, no dashboard; fails if Ray picked another address."""
    loopback_only()
    import ray

    ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, **kwargs)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"Ray bound its node to {node_ip}, not {LOOPBACK}")


def bind_replica_grpc_to_loopback() -> None:
    """In a replica on a 127.0.0.1 node: bind Serve's inter-deployment gRPC server to loopback, not `[::]`.

    Serve (2.60) starts that server on every replica on all addresses, with no option to change it. On a node
    whose Ray address is 127.0.0.1 no other node can use it anyway, so binding it to loopback keeps the whole
    cluster off the machine's other addresses. Call from the deployment's constructor (Serve starts the server
    right after it); elsewhere a no-op.
    """
    import ray

    try:
        if ray.util.get_node_ip_address() != LOOPBACK:
            return
        from ray.serve._private import replica
    except Exception:  # noqa: BLE001 - not in a Ray worker, or Serve moved the module: leave Serve as it is
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback", False):
        return

    def bind_loopback(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address[len('[::]:'):]}"
        return bind(server, address)

    bind_loopback.loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_loopback
