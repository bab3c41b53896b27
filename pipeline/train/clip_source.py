"""Training clips from webdataset shards: the encode job's reader and decoder, plus random crops and flips.

A `ClipSource` walks one worker's shards epoch after epoch and yields clips (video) or stills (images) with
the `SourceCursor` just after each. The cursor is the whole data position: every random choice of a sample
(its crop offsets and flips) is seeded by (seed, epoch, url, key), so a resumed source skips the samples
before the cursor without decoding them and then yields exactly the clips an uninterrupted run would have.
"""

import hashlib
import io
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.source.shard_reader import IMAGE_EXTENSIONS, ShardReader, ShardSample
from pipeline.source.video_decode import (
    ClipSampling,
    DecodeOptions,
    Resolution,
    VideoDecodeError,
    VideoLimits,
    iter_clips,
    resize_and_crop,
)

KINDS = ("video", "image")


@dataclass(frozen=True)
class SourceCursor:
    """Where a source stands: in `epoch`, at position `shard` of that epoch's shard order, after `sample`
    samples of that shard and `clip` clips of the next one."""

    epoch: int = 0
    shard: int = 0
    sample: int = 0
    clip: int = 0


@dataclass(frozen=True)
class CropSettings:
    """Frames are resized so their short side is `resolution`, then a `crop`×`crop` window is cut: at random
    with a random horizontal flip when `random`, else centered (validation)."""

    resolution: int
    crop: int
    random: bool = True

    def __post_init__(self) -> None:
        if self.crop < 1 or self.resolution < self.crop:
            raise ValueError(f"crop {self.crop} must be between 1 and the resolution {self.resolution}")


@dataclass
class TrainClip:
    key: str  # "url#sample_key#clip_index": names the clip in logs of bad steps
    frames: torch.Tensor  # uint8 (T, crop, crop, 3)


def shards_of_worker(urls: list[str], rank: int, world_size: int) -> list[str]:
    """Every `world_size`-th shard from `rank`: disjoint across workers, together all shards."""
    if len(urls) < world_size:
        raise ValueError(f"{len(urls)} shards cannot give each of {world_size} workers its own; "
                         f"use at most {len(urls)} workers or split the data into more shards")
    return urls[rank::world_size]


def seeded_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def decode_image(data: bytes, limits: VideoLimits) -> np.ndarray:
    """RGB (1, H, W, 3) uint8 from still-image bytes; the size is checked from the header before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > limits.max_pixels:
                raise VideoDecodeError(f"image size {image.height}x{image.width} is over {limits.max_pixels} pixels")
            return np.array(image.convert("RGB"))[None]
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise VideoDecodeError(f"cannot decode image: {error}") from None


class ClipSource:
    """Clips of one kind ("video" or "image") from `urls`, forever (epoch after epoch), from `cursor` on.

    A video gives up to `sampling.clips_per_video` clips; an image one 1-frame clip. Samples that cannot
    give one (broken bytes, too short) are reported to `on_skip(key, reason)` and skipped; samples without a
    member of this kind are passed over silently (an image sample in the video source, say).
    """

    def __init__(self, urls: list[str], kind: str, sampling: ClipSampling, crop: CropSettings, seed: int,
                 cursor: SourceCursor = SourceCursor(), limits: VideoLimits = VideoLimits(),
                 on_skip: Callable[[str, str], None] | None = None, shuffle_shards: bool = True):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not urls:
            raise ValueError("a clip source needs at least one shard")
        self.urls, self.kind, self.sampling, self.crop = list(urls), kind, sampling, crop
        self.seed, self.cursor, self.limits = seed, cursor, limits
        self.on_skip = on_skip or (lambda key, reason: None)
        self.shuffle_shards = shuffle_shards

    def shard_order(self, epoch: int) -> list[str]:
        order = list(self.urls)
        if self.shuffle_shards:
            seeded_rng(self.seed, epoch, "shards").shuffle(order)
        return order

    def __iter__(self) -> Iterator[tuple[TrainClip, SourceCursor]]:
        cursor = self.cursor
        while True:
            full_pass = cursor == SourceCursor(cursor.epoch)
            produced = False
            for shard in range(cursor.shard, len(self.urls)):
                for clip, after in self._shard_clips(cursor, shard):
                    produced = True
                    yield clip, after
            if full_pass and not produced:
                wanted = "video" if self.kind == "video" else "/".join(f".{e}" for e in sorted(IMAGE_EXTENSIONS))
                raise ValueError(f"a whole pass over {len(self.urls)} shard(s) gave no usable {self.kind} clip "
                                 f"(no {wanted} member that decodes to enough frames)")
            cursor = SourceCursor(cursor.epoch + 1)

    def _shard_clips(self, cursor: SourceCursor, shard: int) -> Iterator[tuple[TrainClip, SourceCursor]]:
        url = self.shard_order(cursor.epoch)[shard]
        resume = shard == cursor.shard
        first_sample = cursor.sample if resume else 0
        for index, sample in enumerate(ShardReader(url)):
            if index < first_sample:
                continue  # before the cursor: read past, never decoded
            skip_clips = cursor.clip if resume and index == cursor.sample else 0
            clips = self._sample_clips(sample, cursor.epoch)
            for number, frames in enumerate(clips):
                if number < skip_clips:
                    continue
                key = f"{url}#{sample.key}#{number}"
                yield TrainClip(key, frames), SourceCursor(cursor.epoch, shard, index, number + 1)

    def _sample_clips(self, sample: ShardSample, epoch: int) -> Iterator[torch.Tensor]:
        name = f"{sample.url}#{sample.key}"
        if sample.error is not None:
            self.on_skip(name, sample.error)
            return
        data = sample.video() if self.kind == "video" else sample.image()
        if data is None:
            return
        rng = seeded_rng(self.seed, epoch, sample.url, sample.key)
        try:
            if self.kind == "video":
                clips = iter_clips(data[1], self.sampling, Resolution(), 1, DecodeOptions(limits=self.limits))
                for clip in clips:
                    yield self._crop(clip.frames.numpy(), rng)
            else:
                yield self._crop(decode_image(data, self.limits), rng)
        except VideoDecodeError as error:
            self.on_skip(name, error.reason)

    def _crop(self, frames: np.ndarray, rng: random.Random) -> torch.Tensor:
        """Short side to `resolution` (aspect kept), then the crop window and flip."""
        height, width = frames.shape[1:3]
        scale = self.crop.resolution / min(height, width)
        size = max(self.crop.crop, round(height * scale)), max(self.crop.crop, round(width * scale))
        resized = resize_and_crop(frames, *size)
        crop = self.crop.crop
        if self.crop.random:
            top, left = rng.randint(0, size[0] - crop), rng.randint(0, size[1] - crop)
        else:
            top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
        window = resized[:, top:top + crop, left:left + crop]
        if self.crop.random and rng.random() < 0.5:
            window = window.flip(2)
        return window.contiguous()
