"""Frame buckets and extraction modes pick the clips `pipeline.source.clip_plan` documents."""

import pytest

from pipeline.source.clip_plan import ClipSampling, plan_clips
from pipeline.source.video_decode import DecodeOptions, Resolution, decode_clips
from tests.media import encode_mp4, frame_index_of, moving_pattern

# The module docstring's example: a 100-frame video, frame buckets 17 and 33, stride 1, 3 clips per video.
DOCUMENTED = {
    "head": [(0, 17), (0, 33)],
    "chunk": [(0, 17), (0, 33), (17, 17), (33, 33), (34, 17), (66, 33)],
    "slide": [(0, 17), (0, 33), (8, 17), (16, 17), (16, 33), (32, 33)],
    "uniform": [(0, 17), (0, 33), (33, 33), (41, 17), (67, 33), (83, 17)],
    "full": [(0, 33)],
}


@pytest.mark.parametrize("mode", DOCUMENTED)
def test_each_mode_plans_the_documented_clips(mode):
    sampling = ClipSampling(17, clips_per_video=3, frame_buckets=(17, 33), extraction=mode)
    assert plan_clips(100, sampling) == DOCUMENTED[mode]


def test_buckets_that_do_not_fit_are_skipped_and_full_takes_the_longest_that_fits():
    sampling = ClipSampling(17, frame_buckets=(17, 33, 49), extraction="full")
    assert plan_clips(60, sampling) == [(0, 49)] and plan_clips(40, sampling) == [(0, 33)]
    assert plan_clips(16, sampling) == []
    head = ClipSampling(17, frame_buckets=(17, 33, 49), extraction="head")
    assert plan_clips(40, head) == [(0, 17), (0, 33)]


def test_stride_and_slide_step_count_in_source_frames():
    # 5 frames at stride 2 span 9 source frames; slide clips start every 4 source frames.
    sampling = ClipSampling(5, frame_stride=2, clips_per_video=10, extraction="slide", slide_step=4)
    assert plan_clips(20, sampling) == [(0, 5), (4, 5), (8, 5)]
    chunks = ClipSampling(5, frame_stride=2, clips_per_video=10, extraction="chunk")
    assert plan_clips(20, chunks) == [(0, 5), (9, 5)]


@pytest.mark.parametrize("bad", [dict(extraction="random"), dict(slide_step=-1), dict(frame_buckets=(0, 4))])
def test_bad_sampling_is_refused(bad):
    with pytest.raises(ValueError):
        ClipSampling(4, **bad)


def test_decoded_clips_hold_the_planned_frames_of_every_bucket():
    video = encode_mp4(moving_pattern(40, 48, 64), fps=24)
    sampling = ClipSampling(4, frame_stride=2, clips_per_video=2, frame_buckets=(4, 8), extraction="chunk")
    clips = decode_clips(video, sampling, Resolution(), spatial_factor=8)
    assert [(clip.frame_start, clip.num_frames) for clip in clips] == [(0, 4), (0, 8), (7, 4), (15, 8)]
    for index, clip in enumerate(clips):
        assert clip.clip_index == index and clip.frames.shape[0] == clip.num_frames
        assert [frame_index_of(f) for f in clip.frames.numpy()] == list(range(clip.frame_start,
                                                                               clip.frame_start + 2 * clip.num_frames, 2))


@pytest.mark.parametrize("source_fps, expected", [
    (24, [0, 2, 4, 6, 8, 10, 12, 14]),
    (25, [0, 2, 4, 6, 8, 10, 12, 15]),   # the module docstring's example: j·25/12, a tie to the earlier
    (30, [0, 2, 5, 7, 10, 12, 15, 17]),
])
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_target_fps_picks_the_nearest_frames_by_time_and_records_the_real_rate(source_fps, expected, decoder):
    video = encode_mp4(moving_pattern(40, 48, 64), fps=source_fps)
    sampling = ClipSampling(8, clips_per_video=2, target_fps=12)
    clips = decode_clips(video, sampling, Resolution(), spatial_factor=8, options=DecodeOptions(decoder))
    first = clips[0]
    assert [frame_index_of(frame) for frame in first.frames.numpy()] == expected
    assert first.frame_start == 0 and first.fps == pytest.approx(7 * source_fps / expected[-1])
    assert first.frame_stride == (2 if source_fps == 24 else None)
    # The second clip is planned on the 12 fps sequence too: it ends at the last resampled frame.
    last = [frame_index_of(frame) for frame in clips[1].frames.numpy()][-1]
    assert last <= 39 and 39 - last < source_fps / 12


def test_variable_frame_rate_is_sampled_by_timestamps():
    import io
    from fractions import Fraction

    import av
    import numpy as np

    # Frames 0-9 a tenth of a second apart, then 10-19 a fortieth: 12 fps over the first second takes
    # every frame near j/12 s, whatever the index.
    frames = moving_pattern(20, 48, 64)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=40)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 40)
        times = [4 * i for i in range(10)] + [40 + i for i in range(10)]  # in 1/40 s
        for frame, pts in zip(frames, times):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = pts, Fraction(1, 40)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video = buffer.getvalue()
    seconds = np.array(times) / 40
    expected = [int(np.argmin(np.abs(seconds - j / 12) + 1e-9 * np.arange(20))) for j in range(14)]
    for decoder in ("decord", "pyav"):
        (clip,) = decode_clips(video, ClipSampling(14, target_fps=12), Resolution(), spatial_factor=8,
                               options=DecodeOptions(decoder))
        assert [frame_index_of(frame) for frame in clip.frames.numpy()] == expected


def test_spans_become_exactly_those_clips_the_longest_bucket_that_fits_each():
    from pipeline.source.clip_spans import SpanSource, read_spans

    video = encode_mp4(moving_pattern(60, 48, 64), fps=25)
    sampling = ClipSampling(4, frame_buckets=(4, 8, 16))
    meta = '{"scenes": [[0.0, 0.4], ["00:00:01.000", "00:00:02.000"], [0.44, 0.56], [2.2, 2.4]]}'
    spans = read_spans(meta, SpanSource("scenes"))
    for decoder in ("decord", "pyav"):
        clips = decode_clips(video, sampling, Resolution(), 8, DecodeOptions(decoder), spans)
        # [0, 0.4 s) holds frames 0-9: 8 fit; [1 s, 2 s) frames 25-49: 16; [0.44, 0.56) 11-13: none (3 < 4);
        # [2.2, 2.4) frames 55-59: 4.
        assert [(c.frame_start, c.num_frames) for c in clips] == [(0, 8), (25, 16), (55, 4)]
        for clip in clips:
            assert [frame_index_of(f) for f in clip.frames.numpy()] == list(range(clip.frame_start,
                                                                                   clip.frame_start + clip.num_frames))
    in_frames = decode_clips(video, sampling, Resolution(), 8, spans=[(10, 30)], span_unit="frames")
    assert [(c.frame_start, c.num_frames) for c in in_frames] == [(10, 16)]
    with pytest.raises(Exception, match="none of the sample's 1 clip spans holds a clip of 4 frames"):
        decode_clips(video, sampling, Resolution(), 8, spans=[(0.0, 0.1)])


@pytest.mark.parametrize("meta, message", [
    (None, "no JSON sidecar"),
    ("{not json", "does not parse"),
    ('{"other": []}', "no list 'scenes'"),
    ('{"scenes": [[1.0]]}', "not a [start, end] pair"),
    ('{"scenes": [[2.0, 1.0]]}', "needs 0 <= start < end"),
    ('{"scenes": [["soon", 1.0]]}', "is not a time"),
])
def test_bad_spans_say_what_is_wrong(meta, message):
    from pipeline.source.clip_spans import SpanSource, read_spans

    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_spans(meta, SpanSource("scenes"))


def test_a_one_frame_clip_from_a_span_keeps_the_source_rate():
    video = encode_mp4(moving_pattern(20, 48, 64), fps=25)
    (clip,) = decode_clips(video, ClipSampling(1), Resolution(), 8, spans=[(0.2, 0.5)])
    assert (clip.frame_start, clip.num_frames, clip.frame_stride) == (5, 1, 1)
    assert clip.fps == pytest.approx(25)
