"""Random access to a video's RGB frames by index, through decord or, for what decord cannot decode, PyAV.

decord is the primary decoder (frame-exact against PyAV for 8-bit streams, seeks by index). Its bundled
FFmpeg has no AV1 decoder and refuses some containers, and it converts streams of more than 8 bits per
component to RGB differently from FFmpeg's swscale (27 dB apart on a 10-bit HEVC test clip); PyAV (FFmpeg
with dav1d, HEVC, VP9, ProRes, 10-bit formats) decodes those by index instead. `open_frames` picks by
`--decoder`.

Both can also scale while converting to RGB (`--resize-in decoder`: FFmpeg's swscale, bilinear, widening its
filter when downscaling). decord 0.6 fails on some output widths (16, 24, 48, 72 among those tried; its copy
assumes unpadded rows): the first-frame check in `open_frames` catches that, and auto then takes PyAV.
"""

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import av
import decord
import numpy as np

DECODERS = ("auto", "decord", "pyav")

# (height, width) a reader scales frames to while converting them to RGB; None keeps the stream's size.
Size = tuple[int, int] | None


class VideoDecodeError(Exception):
    """The video cannot give the clips asked for; `reason` says why, in words for an error row."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FrameReader(Protocol):
    name: str
    fps: float

    def __len__(self) -> int: ...

    def get(self, indices: list[int]) -> np.ndarray:
        """uint8 RGB frames (N, H, W, 3) at `indices`, in increasing order."""
        ...

    def timestamps(self) -> np.ndarray:
        """Presentation time in seconds of each frame, from the container (no frame decoded): what variable
        frame rate footage is resampled by."""
        ...


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


class DecordFrames:
    name = "decord"

    def __init__(self, video: bytes, num_threads: int = 1, size: Size = None) -> None:
        height, width = size or (-1, -1)
        try:
            self._reader = decord.VideoReader(io.BytesIO(video), num_threads=num_threads, width=width, height=height)
        except AssertionError:
            # decord asserts a positive frame count right after opening.
            raise VideoDecodeError("video has no frames") from None
        except (RuntimeError, decord.DECORDError) as error:
            raise VideoDecodeError(first_line(error)) from None
        self.fps = float(self._reader.get_avg_fps())

    def __len__(self) -> int:
        return len(self._reader)

    def timestamps(self) -> np.ndarray:
        return self._reader.get_frame_timestamp(np.arange(len(self)))[:, 0].astype(np.float64)

    def get(self, indices: list[int]) -> np.ndarray:
        try:
            return self._reader.get_batch(indices).asnumpy()
        except (RuntimeError, decord.DECORDError) as error:
            raise VideoDecodeError(
                f"decoding frames {indices[0]}..{indices[-1]} failed (corrupt or truncated video): "
                f"{first_line(error)}") from None


class PyAVFrames:
    """Decodes forward from the start, keeping only the frames asked for; requests in increasing order (as the
    clips of a video come) cost one pass, and the last frame read is kept, so a request starting where the
    previous one ended does not restart. The frame count is the container's where it declares one (mp4, mov),
    else the packets counted by demuxing (webm, avi), without decoding. Scaling uses swscale's bilinear filter,
    as decord does."""

    name = "pyav"

    def __init__(self, video: bytes, size: Size = None) -> None:
        self._video = video
        self._size = size
        try:
            with av.open(io.BytesIO(video)) as container:
                if not container.streams.video:
                    raise VideoDecodeError("the file holds no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 0.0
                self._count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as error:
            raise VideoDecodeError(error.strerror or first_line(error)) from None
        if self._count == 0:
            raise VideoDecodeError("video has no frames")
        self._frames: Iterator[av.VideoFrame] | None = None
        self._container: av.container.InputContainer | None = None
        self._next = 0
        self._last: av.VideoFrame | None = None  # frame self._next - 1, still in the stream's format

    def __len__(self) -> int:
        return self._count

    def timestamps(self) -> np.ndarray:
        with av.open(io.BytesIO(self._video)) as container:
            stream = container.streams.video[0]
            points = sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None and packet.size)
            start = stream.start_time or 0
        seconds = np.array([(pts - start) * stream.time_base for pts in points[:self._count]], dtype=np.float64)
        if len(seconds) < self._count:
            raise VideoDecodeError(f"the container gives timestamps for {len(seconds)} of its {self._count} frames")
        return seconds

    def _restart(self) -> None:
        self.close()
        self._container = av.open(io.BytesIO(self._video))
        self._frames = self._container.decode(video=0)
        self._next = 0
        self._last = None

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self._size is None:
            return frame.to_ndarray(format="rgb24")
        height, width = self._size
        return frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()

    def get(self, indices: list[int]) -> np.ndarray:
        wanted, found = set(indices), {}
        if self._last is not None and indices[0] == self._next - 1:
            found[indices[0]] = self._rgb(self._last)
        elif self._frames is None or indices[0] < self._next:
            self._restart()
        while len(found) < len(wanted):
            try:
                frame = next(self._frames)
            except StopIteration:
                raise VideoDecodeError(f"the stream ended after {self._next} frames, but the container declared "
                                       f"{self._count}; frame {indices[-1]} does not exist") from None
            except av.error.FFmpegError as error:
                raise VideoDecodeError(f"decoding frame {self._next} failed (corrupt video): "
                                       f"{error.strerror or first_line(error)}") from None
            self._last = frame
            if self._next in wanted:
                found[self._next] = self._rgb(frame)
            self._next += 1
        return np.stack([found[index] for index in indices])

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = self._frames = None


@dataclass(frozen=True)
class StreamInfo:
    """The first video stream as FFmpeg declares it in the headers (no frame decoded): for size limits, for
    choosing a decoder and for error rows."""

    container: str
    codec: str | None = None
    codec_long_name: str | None = None
    pix_fmt: str | None = None
    height: int = 0
    width: int = 0

    @property
    def bits_per_component(self) -> int:
        try:
            return max(component.bits for component in av.VideoFormat(self.pix_fmt).components)
        except (ValueError, TypeError):
            return 8

    @property
    def needs_pyav(self) -> bool:
        """decord cannot decode this stream (AV1), or converts it to RGB unlike FFmpeg (over 8 bits)."""
        return "av1" in f"{self.codec} {self.codec_long_name}".lower() or self.bits_per_component > 8

    def __str__(self) -> str:
        if self.codec is None:
            return self.container
        return f"container {self.container}, codec {self.codec} ({self.codec_long_name}), pixel format {self.pix_fmt}"


def probe_stream(video: bytes) -> StreamInfo:
    """Raises VideoDecodeError for bytes FFmpeg cannot open as a container, or a container without video."""
    try:
        with av.open(io.BytesIO(video)) as container:
            if not container.streams.video:
                raise VideoDecodeError("the file holds no video stream")
            context = container.streams.video[0].codec_context
            return StreamInfo(container.format.name, context.codec.name, context.codec.long_name, context.pix_fmt,
                              int(context.height), int(context.width))
    except av.error.FFmpegError as error:
        raise VideoDecodeError("cannot decode video (not a video, corrupt or truncated): "
                               f"{error.strerror or first_line(error)}") from None


def open_frames(video: bytes, decoder: str = "auto", num_threads: int = 1,
                stream: StreamInfo | None = None, size: Size = None) -> FrameReader:
    """A reader from `decoder`: decord, PyAV, or auto (PyAV for what `StreamInfo.needs_pyav`; otherwise decord,
    then PyAV for a stream decord cannot open or whose first frame it cannot decode). When every decoder tried
    fails, the reason names the stream and each decoder's message. `stream` is `probe_stream(video)`, when
    the caller has it; `size` the (height, width) frames are scaled to while decoding."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    stream = stream or probe_stream(video)
    attempts = [("decord", lambda: _first_frame_read(DecordFrames(video, num_threads, size))),
                ("pyav", lambda: _first_frame_read(PyAVFrames(video, size)))]
    if decoder != "auto":
        attempts = [attempt for attempt in attempts if attempt[0] == decoder]
    failures = []
    if decoder == "auto" and stream.needs_pyav:
        attempts = attempts[1:]
        failures.append("decord: not tried (no AV1 decoder; converts over-8-bit formats unlike FFmpeg)")
    for name, attempt in attempts:
        try:
            return attempt()
        except VideoDecodeError as error:
            failures.append(f"{name}: {error.reason}")
    raise VideoDecodeError(f"cannot decode video ({stream}; not a video, corrupt, truncated or an unsupported "
                           f"codec): {'; '.join(failures)}")


def _first_frame_read(reader: FrameReader) -> FrameReader:
    """A decoder can open a stream it then cannot decode; reading the first frame tells."""
    reader.get([0])
    return reader
