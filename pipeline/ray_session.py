"""Starting or joining Ray without tokens, telemetry or files outside the temp dir."""

from __future__ import annotations

import logging
import os
import tempfile
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


def connect(address: str | None, verbose: bool = False, init_kwargs: dict[str, Any] | None = None) -> None:
    """An embedded local Ray when `address` is None (unless RAY_ADDRESS says where one is, as under
    `ray job submit`); otherwise join the cluster at `auto`, `HOST:PORT` or `ray://...`."""
    configure_ray_environment()
    import ray

    if ray.is_initialized():
        return
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
    ray.init(**kwargs)


def node_cpu_counts() -> list[float]:
    import ray

    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
