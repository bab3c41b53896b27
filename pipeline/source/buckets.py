"""Resolution and aspect-ratio buckets: one cache for landscape, portrait and square footage.

A spec names pixel budgets ("areas": 256 means about 256² pixels), aspect ratios (a list, or `auto`: every
area-preserving size in multiples of `step` between 1:3 and 3:1, as musubi-tuner generates them) and frame
counts. A video goes to the bucket whose aspect ratio is nearest its own (by log ratio), at the largest area
whose size fits inside the video without upscaling; frames are then resized to cover that size and
center-cropped, as `--resolution HxW` does.

    area=256,512;aspect=16:9,1:1,9:16;frames=17,33
    area=256;aspect=auto;step=32
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# `auto` aspect ratios span this range, each way.
AUTO_MAX_ASPECT = 3.0


class BucketSpecError(ValueError):
    """A spec that cannot be parsed, or that the VAE cannot take; the message names the nearest valid values."""


@dataclass(frozen=True)
class BucketSpec:
    areas: tuple[int, ...]
    # width / height of each bucket; empty for `auto`
    aspects: tuple[float, ...]
    # frame counts; empty: the job's --num-frames
    frames: tuple[int, ...]
    step: int
    # Take the smallest area's bucket for a video smaller than every bucket, instead of refusing it.
    allow_upscale: bool = False

    def sizes(self, area: int) -> list[tuple[int, int]]:
        """(height, width) of each bucket of one area, in multiples of `step`, about `area`² pixels."""
        if self.aspects:
            return sorted({_size_for(area, aspect, self.step) for aspect in self.aspects})
        low = math.ceil(area / math.sqrt(AUTO_MAX_ASPECT) / self.step) * self.step
        high = math.floor(area * math.sqrt(AUTO_MAX_ASPECT) / self.step) * self.step
        return sorted({_size_for_width(area, width, self.step) for width in range(max(low, self.step), high + 1,
                                                                                   self.step)})

    def choose(self, src_height: int, src_width: int) -> tuple[int, int]:
        """The (height, width) a video of this size goes to: at each area, largest first, the size nearest the
        video's aspect ratio; the first that fits inside the video. Raises ValueError when none fits (unless
        `allow_upscale`, which then takes the smallest area's)."""
        target = math.log(src_width / src_height)
        nearest = {area: min(self.sizes(area), key=lambda size: (abs(math.log(size[1] / size[0]) - target), size))
                   for area in self.areas}
        for area in sorted(self.areas, reverse=True):
            height, width = nearest[area]
            if height <= src_height and width <= src_width:
                return height, width
        smallest = nearest[min(self.areas)]
        if self.allow_upscale:
            return smallest
        raise ValueError(f"video {src_height}x{src_width} is smaller than every bucket of its aspect ratio (the "
                         f"smallest is {smallest[0]}x{smallest[1]}); not upscaled without --allow-upscale")

    def __str__(self) -> str:
        parts = [f"area={','.join(map(str, self.areas))}",
                 f"aspect={','.join(map(repr, self.aspects)) if self.aspects else 'auto'}"]
        if self.frames:
            parts.append(f"frames={','.join(map(str, self.frames))}")
        return ";".join([*parts, f"step={self.step}"])


def _size_for(area: int, aspect: float, step: int) -> tuple[int, int]:
    """The size within the area's budget whose ratio is nearest `aspect` (then the larger), from either side
    rounded down or up to a step: the same rule for a ratio and its inverse, so 16:9 and 9:16 are transposes."""
    candidates = []
    for ideal, transposed in ((area * math.sqrt(aspect), False), (area / math.sqrt(aspect), True)):
        for side in {math.floor(ideal / step) * step, math.ceil(ideal / step) * step}:
            if side >= step:
                height, width = _size_for_width(area, side, step)
                candidates.append((width, height) if transposed else (height, width))
    return min(candidates, key=lambda size: (abs(math.log(size[1] / size[0] / aspect)), -size[0] * size[1], size))


def _size_for_width(area: int, width: int, step: int) -> tuple[int, int]:
    # The height that keeps width × height within the area's pixel budget, never below one step.
    return max(step, area * area // width // step * step), width


def _parse_aspect(text: str) -> float:
    ratio = re.fullmatch(r"(\d+(?:\.\d+)?)[:/](\d+(?:\.\d+)?)", text)
    try:
        value = float(ratio[1]) / float(ratio[2]) if ratio else float(text)
    except (ValueError, ZeroDivisionError):
        value = 0.0
    if not value > 0 or math.isinf(value):
        raise BucketSpecError(f"bad aspect ratio {text!r}: use W:H (16:9), a number (1.78), or auto")
    return value


def _positive_ints(key: str, text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip().isdigit())
    if not values or len(values) != len(text.split(",")) or min(values) < 1:
        raise BucketSpecError(f"{key}= takes a comma list of positive integers, not {text!r}")
    return tuple(sorted(set(values)))


def parse_buckets(text: str, spatial_factor: int, allow_upscale: bool = False) -> BucketSpec:
    """Parse `area=...;aspect=...;frames=...;step=...` (area required). `step` defaults to twice the VAE's
    spatial factor, so latent sizes are even (what patch-2 transformers take), and must be a multiple of it."""
    fields: dict[str, str] = {}
    for part in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("area", "aspect", "frames", "step") or key in fields:
            raise BucketSpecError(f"bad bucket spec {text!r}: use area=A[,A...];aspect=W:H,...|auto;"
                                  "frames=F[,F...];step=S (area required, each key once)")
        fields[key] = value.strip()
    if "area" not in fields:
        raise BucketSpecError(f"bucket spec {text!r} names no area= (pixel budgets, e.g. area=256,512)")
    step = _positive_ints("step", fields["step"])[0] if "step" in fields else 2 * spatial_factor
    if step % spatial_factor:
        below = step // spatial_factor * spatial_factor
        nearest = f"{below} or {below + spatial_factor}" if below else f"{spatial_factor}"
        raise BucketSpecError(f"step={step} is not a multiple of the VAE's spatial factor {spatial_factor}; "
                              f"use {nearest}")
    aspect_text = fields.get("aspect", "auto")
    aspects = () if aspect_text.lower() == "auto" else tuple(sorted({_parse_aspect(a.strip())
                                                                     for a in aspect_text.split(",")}))
    spec = BucketSpec(_positive_ints("area", fields["area"]), aspects,
                      _positive_ints("frames", fields["frames"]) if "frames" in fields else (), step, allow_upscale)
    for area in spec.areas:
        if area < step:
            raise BucketSpecError(f"area={area} is below step={step}: no bucket fits")
    return spec
