"""Starting or joining Ray without tokens, telemetry or files outside the temp dir."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from typing import Any

# Set before `import ray` anywhere in the process: Ray reads them at import and at start.
RAY_ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TMPDIR": os.path.join(tempfile.gettempdir(), "ray"),
    # Ray's accelerator probing and dedup chatter are noise for a batch job.
    "RAY_DEDUP_LOGS": "1",
}


def configure_ray_environment() -> None:
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def connect(address: str | None, verbose: bool = False, init_kwargs: dict[str, Any] | None = None) -> bool:
    """An embedded local Ray when `address` is None (unless RAY_ADDRESS says where one is, as under
    `ray job submit`); otherwise join the cluster at `auto`, `HOST:PORT` or `ray://...`.

    True when this call connected (the caller then shuts Ray down); False when Ray was already up."""
    configure_ray_environment()
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "log_to_driver": verbose,
        "configure_logging": True,
    }
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:
        os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)
        kwargs.update(include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    else:
        kwargs["address"] = address
    kwargs.update(init_kwargs or {})
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(**kwargs)
    if main_thread and sigterm is not None:
        # ray.init replaces the SIGTERM handler with sys.exit; the job's own handler cleans up first.
        signal.signal(signal.SIGTERM, sigterm)
    return True


def node_resources() -> list[dict[str, float]]:
    """Total resources of each live node."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def actors_that_fit(cpus: float, gpus: float) -> int:
    """How many actors of this shape the cluster can hold at once.

    An actor asking for more than any node has is never placed, and a shard sent to it would wait
    forever, so the runner sizes its pool with this rather than trusting the request.
    """
    count = 0
    for resources in node_resources():
        per_node = int(resources.get("CPU", 0.0) // cpus) if cpus > 0 else 1 << 30
        if gpus > 0:
            per_node = min(per_node, int(resources.get("GPU", 0.0) // gpus))
        count += per_node
    return count
