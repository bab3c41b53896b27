"""Hostile shards: pickles never run, oversized videos are refused before decoding, keys stay strings."""

import io
import json
import os
import pickle
import subprocess
import sys

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.encode import main as encode_main
from pipeline.source.video_decode import (
    ClipSampling,
    DecodeOptions,
    VideoDecodeError,
    VideoLimits,
    decode_clips,
    parse_resolution,
)
from tests.media import encode_mp4, moving_pattern, write_tar
from tests.processes import HUNG_AFTER_S, ROOT

ENCODE = ["--vae", "tiny", "--allow-random-weights", "--num-frames", "4", "--resolution", "32", "--no-progress",
          "--scores", "none"]


class _CreatesFile:
    """Unpickling this runs `open(path, "w")`: if the file exists afterwards, something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def huge_mp4(size: int = 8000) -> bytes:
    """A real mpeg4 video of two size x size frames; flat content keeps the file small."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 90, np.uint8), format="rgb24")
        for _ in range(2):
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def test_pickle_members_are_never_unpickled(tmp_path, local_ray):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(str(marker)))
    pickle.loads(payload)  # the payload works: unpickling it does create the file
    assert marker.exists()
    marker.unlink()
    write_tar(tmp_path / "shard-00000.tar", [
        ("a", {"mp4": encode_mp4(moving_pattern(8, 48, 64)), "pyd": payload, "pickle": payload, "pth": payload}),
        ("b", {"pickle": payload}),
    ])
    assert encode_main(["--input", str(tmp_path / "shard-00000.tar"), "--output", str(tmp_path / "cache"), *ENCODE]) == 0
    assert not marker.exists()
    rows = {row["sample_key"]: row for row in pq.read_table(tmp_path / "cache" / "shard-00000.parquet").to_pylist()}
    assert rows["a"]["status"] == "ok"
    assert rows["b"]["status"] == "error" and "no video member" in rows["b"]["error"]


def test_sample_keys_are_never_paths(tmp_path, local_ray):
    shards = tmp_path / "in" / "deep"
    shards.mkdir(parents=True)
    write_tar(shards / "shard-00000.tar", [("../../escaped", {"mp4": encode_mp4(moving_pattern(8, 48, 64))})])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert encode_main(["--input", str(shards / "shard-00000.tar"), "--output", str(tmp_path / "out" / "cache"),
                        *ENCODE]) == 0
    created = sorted(set(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) - set(before))
    assert all(path.parts[0] == "out" for path in created), created
    (row,) = pq.read_table(tmp_path / "out" / "cache" / "shard-00000.parquet").to_pylist()
    assert row["sample_key"] == "../../escaped" and row["key"] == "shard-00000/../../escaped/0"


def test_oversized_videos_are_refused_before_decoding():
    video = huge_mp4(512)
    with pytest.raises(VideoDecodeError, match="declared frame size 512x512 is over --max-pixels"):
        decode_clips(video, ClipSampling(2), parse_resolution("32"), 2,
                     DecodeOptions(limits=VideoLimits(max_pixels=256 * 256)))
    with pytest.raises(VideoDecodeError, match="2 frames, over --max-frames 1"):
        decode_clips(video, ClipSampling(1), parse_resolution("32"), 2, DecodeOptions(limits=VideoLimits(max_frames=1)))
    (clip,) = decode_clips(video, ClipSampling(2), parse_resolution("32"), 2)
    assert clip.frames.shape == (2, 32, 32, 3)


_REFUSE_IN_CHILD = """
import json, resource, sys
from pipeline.encode.settings import EncodeSettings
from pipeline.run.job_plan import plan_job
from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.shard_encoder import ShardEncoder
settings = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=2, resolution="32",
                          scoring=ScoreSettings(scores=()))
plan = plan_job(sys.argv[1], sys.argv[2], settings)
encoder = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = encoder.process(plan.tasks[0])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "error_rows": outcome.error_rows}))
"""


def test_an_8000x8000_video_is_refused_within_512_mb(tmp_path):
    video = huge_mp4(8000)
    write_tar(tmp_path / "shard-00000.tar", [("huge", {"mp4": video})])
    # The whole step (reading, probing, refusing, committing) in a fresh process, whose peak RSS is its own.
    result = subprocess.run([sys.executable, "-c", _REFUSE_IN_CHILD, str(tmp_path / "shard-00000.tar"),
                             str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True, timeout=HUNG_AFTER_S,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["error_rows"] == 1
    assert (figures["after_kib"] - figures["before_kib"]) / 1024 < 512
    (row,) = pq.read_table(tmp_path / "cache" / "shard-00000.parquet").to_pylist()
    assert "declared frame size 8000x8000" in row["error"]
