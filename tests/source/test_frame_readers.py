"""decord first, PyAV for what decord cannot decode: AV1, 10-bit HEVC, VP9, ProRes and MJPEG, by index."""

import io

import av
import numpy as np
import pytest
import torch

from pipeline.encode.scoring import ScoreSettings, psnr
from pipeline.encode.settings import EncodeSettings
from pipeline.encode.shard_encoder import ShardEncoder
from pipeline.reader import LatentDataset
from pipeline.run.job_plan import plan_job
from pipeline.source.frame_readers import PyAVFrames, open_frames
from pipeline.source.video_decode import (
    ClipSampling,
    DecodeOptions,
    Resolution,
    VideoDecodeError,
    decode_clips,
    resize_and_crop,
)
from tests.media import (
    CODEC_SAMPLES,
    encode_mp4,
    encode_video,
    moving_pattern,
    write_tar,
)

SAMPLING = ClipSampling(num_frames=4, frame_stride=2, clips_per_video=2)
PYAV_KINDS = {"av1": "pyav", "hevc-10bit": "pyav", "prores": "pyav"}  # AV1, and 10-bit pixel formats


@pytest.fixture(scope="module")
def videos() -> dict[str, bytes]:
    frames = moving_pattern(20, 64, 96, seed=4)
    return {kind: encode_video(frames, kind) for kind in CODEC_SAMPLES}


def pyav_frames(video: bytes) -> np.ndarray:
    """Every frame, decoded by PyAV directly and converted to RGB: the reference."""
    with av.open(io.BytesIO(video)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize("kind", list(CODEC_SAMPLES))
def test_every_codec_decodes_to_the_frames_pyav_gives(videos, kind):
    clips = decode_clips(videos[kind], SAMPLING, Resolution(32, 48), 8)
    assert len(clips) == 2
    # decord 0.6 has no AV1 decoder and converts over-8-bit formats unlike FFmpeg; the rest it decodes itself.
    assert {clip.decoder for clip in clips} == {PYAV_KINDS.get(kind, "decord")}
    reference = pyav_frames(videos[kind])
    for clip in clips:
        indices = list(range(clip.frame_start, clip.frame_start + SAMPLING.span, SAMPLING.frame_stride))
        expected = resize_and_crop(reference[indices], 32, 48)
        assert psnr(expected[None].float() / 255, clip.frames[None].float() / 255).item() >= 40


def test_pyav_and_decord_give_the_same_frames_of_h264():
    video = encode_mp4(moving_pattern(20, 64, 96, seed=5))
    by_decord = decode_clips(video, SAMPLING, Resolution(), 8, DecodeOptions("decord"))
    by_pyav = decode_clips(video, SAMPLING, Resolution(), 8, DecodeOptions("pyav"))
    assert [c.decoder for c in by_pyav] == ["pyav", "pyav"] and [c.decoder for c in by_decord] == ["decord", "decord"]
    for a, b in zip(by_decord, by_pyav):
        assert a.frame_start == b.frame_start and a.fps == pytest.approx(b.fps)
        assert torch.equal(a.frames, b.frames)


def test_pyav_reads_forward_and_restarts_for_an_earlier_frame(videos):
    reader = PyAVFrames(videos["vp9"])  # webm declares no frame count: counted by demuxing
    assert len(reader) == 20
    late, early = reader.get([10, 12]), reader.get([1, 3])
    reference = pyav_frames(videos["vp9"])
    assert np.array_equal(late, reference[[10, 12]]) and np.array_equal(early, reference[[1, 3]])
    with pytest.raises(VideoDecodeError, match="stream ended after 20 frames.*frame 25 does not exist"):
        reader.get([25])


def test_only_decord_refuses_av1_naming_the_stream(videos):
    with pytest.raises(VideoDecodeError) as error:
        decode_clips(videos["av1"], SAMPLING, Resolution(32, 48), 8, DecodeOptions("decord"))
    assert "AV1" in error.value.reason and "decord: " in error.value.reason
    assert "pyav: " not in error.value.reason


def _damaged(video: bytes) -> bytes:
    """The headers intact, the first 2000 bytes of the frame data zeroed."""
    data = bytearray(video)
    start = data.index(b"mdat") + 4
    data[start:start + 2000] = bytes(2000)
    return bytes(data)


def test_a_stream_no_decoder_reads_names_the_stream_and_every_decoder(videos):
    with pytest.raises(VideoDecodeError) as error:
        open_frames(_damaged(videos["av1"]))
    reason = error.value.reason
    assert reason.startswith("cannot decode video (container mov,mp4"), reason
    assert "AV1" in reason and "pixel format yuv420p" in reason
    assert "decord: not tried" in reason and "pyav: decoding frame 0 failed" in reason
    with pytest.raises(VideoDecodeError, match="codec h264 .*decord: .*; pyav: "):
        open_frames(_damaged(encode_mp4(moving_pattern(20, 64, 96))))


def test_bytes_ffmpeg_cannot_open_say_so():
    with pytest.raises(VideoDecodeError, match="cannot decode video \\(not a video, corrupt or truncated\\)"):
        open_frames(b"not a video at all" * 100)


def test_a_shard_of_every_codec_encodes_and_rows_say_which_decoder(videos, tmp_path):
    samples = [(kind, {"mp4" if kind in ("av1", "hevc-10bit") else CODEC_SAMPLES[kind][1]: data})
               for kind, data in videos.items()]
    samples.append(("broken", {"mp4": videos["av1"][: len(videos["av1"]) // 3]}))
    write_tar(tmp_path / "shard-00000.tar", samples)
    settings = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=4, frame_stride=2,
                              clips_per_video=2, resolution="32", scoring=ScoreSettings(scores=("psnr",)))
    plan = plan_job(str(tmp_path / "shard-00000.tar"), str(tmp_path / "cache"), settings)
    outcome = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1).process(plan.tasks[0])
    assert (outcome.clips, outcome.error_rows) == (10, 1)
    rows = list(LatentDataset(str(tmp_path / "cache"), columns=["sample_key", "decoder"]))
    assert {row["sample_key"]: row["decoder"] for row in rows} == {
        kind: PYAV_KINDS.get(kind, "decord") for kind in CODEC_SAMPLES}
