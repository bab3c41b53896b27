"""Packing a folder of videos (with `.json` / `.txt` sidecars), and optionally still images, into deterministic
webdataset tars."""

import os
import tarfile
import tempfile
from pathlib import Path

from pipeline.errors import UsageError
from pipeline.source.shard_reader import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

SIDECAR_EXTENSIONS = ("json", "txt")


class PackingError(UsageError):
    """A folder cannot be packed into shards: not a folder, no videos, two videos mapping to one key, or
    an output folder that cannot be written or already holds shards."""


def _sample_key(relative: Path) -> str:
    """`a/b.c.mp4` → `a_b_c`: webdataset keys end at the first dot, so dots and `/` become `_`."""
    return relative.with_suffix("").as_posix().replace("/", "_").replace(".", "_")


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    # Fixed metadata: the same folder always packs to byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with open(path, "rb") as data:
        tar.addfile(info, data)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Create `out` and prove it takes writes; its `*.tar` files are refused, or removed with `overwrite`,
    so that a `*.tar` glob over it never picks up a shard of an earlier packing."""
    if out.exists() and not out.is_dir():
        raise PackingError(f"output {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PackingError(f"output folder {out} is not writable: {exc.strerror or exc}") from exc
    existing = sorted(path.name for path in out.glob("*.tar"))
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise PackingError(f"output folder {out} already holds {len(existing)} shard(s) ({shown}); use another "
                           "folder, or --overwrite to remove its *.tar files first")
    for name in existing:
        (out / name).unlink()


def pack_videos_into_shards(src_dir: str | Path, out_dir: str | Path, samples_per_shard: int = 100,
                            pattern: str = "shard-{:05d}.tar", overwrite: bool = False,
                            include_images: bool = False) -> list[Path]:
    """Pack every video (and with `include_images` every still image) under src_dir (recursive, sorted by
    path) into webdataset tars, one sample each.

    Hidden files and folders are skipped. A video's `.json` and `.txt` sidecars (same folder, same
    stem) join its sample. The key is the
    path under src_dir without the extension, `/` and `.` replaced by `_` (see `_sample_key`); two
    videos with one key raise PackingError. Shards are written under a temporary name and renamed,
    and are byte-identical across runs. An out_dir already holding `*.tar` files is refused, unless
    `overwrite`, which removes them first; other files there are left alone.
    """
    src, out = Path(src_dir), Path(out_dir)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    if pattern.format(0) == pattern.format(1):
        raise PackingError(f"pattern {pattern!r} gives every shard the same name; put {{:05d}} in it")
    if not src.is_dir():
        raise PackingError(f"{src} is not a folder")
    wanted = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS if include_images else VIDEO_EXTENSIONS
    videos = sorted((path for path in src.rglob("*")
                     if path.is_file() and path.suffix[1:].lower() in wanted
                     # hidden files include macOS `._name.mp4` resource forks, which are not videos
                     and not any(part.startswith(".") for part in path.relative_to(src).parts)),
                    key=lambda path: path.relative_to(src).as_posix())
    if not videos:
        raise PackingError(f"no video files under {src} (looked for {', '.join(sorted(wanted))})")
    keyed: dict[str, Path] = {}
    for video in videos:
        key = _sample_key(video.relative_to(src))
        if key in keyed:
            raise PackingError(f"{keyed[key]} and {video} both map to sample key {key!r}; rename one")
        keyed[key] = video
    _prepare_out_dir(out, overwrite)
    written: list[Path] = []
    items = list(keyed.items())
    for shard_index, first in enumerate(range(0, len(items), samples_per_shard)):
        path = out / pattern.format(shard_index)
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for key, video in items[first:first + samples_per_shard]:
                _add_file(tar, f"{key}.{video.suffix[1:].lower()}", video)
                for extension in SIDECAR_EXTENSIONS:
                    sidecar = video.with_suffix("." + extension)
                    if sidecar.is_file():
                        _add_file(tar, f"{key}.{extension}", sidecar)
        os.replace(partial, path)
        written.append(path)
    return written
