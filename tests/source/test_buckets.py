"""Resolution and aspect-ratio buckets: parsing, the sizes they generate, and which one a video goes to."""

import pytest

from pipeline.source.buckets import BucketSpecError, parse_buckets

# step 16 for a VAE of spatial factor 8; each area's sizes keep width x height within area².
SPEC = "area=64,96;aspect=16:9,1:1,9:16"


def test_sizes_are_multiples_of_the_step_within_the_area():
    spec = parse_buckets(SPEC, spatial_factor=8)
    assert spec.step == 16
    assert spec.sizes(64) == [(48, 80), (64, 64), (80, 48)]
    assert spec.sizes(96) == [(64, 128), (96, 96), (128, 64)]  # 16:9 and 9:16 are transposes
    generated = parse_buckets("area=256", spatial_factor=8)  # aspect=auto: every width step from 1:3 to 3:1
    sizes = generated.sizes(256)
    assert all(h % 16 == 0 and w % 16 == 0 and h * w <= 256 * 256 for h, w in sizes)
    assert min(w / h for h, w in sizes) >= 1 / 3 - 0.05 and max(w / h for h, w in sizes) <= 3 + 0.05
    assert (256, 256) in sizes and len(sizes) == 18


@pytest.mark.parametrize("source, bucket", [
    ((96, 160), (64, 128)),    # landscape: nearest ratio, largest area that fits
    ((160, 96), (128, 64)),    # portrait
    ((128, 128), (96, 96)),    # square
    ((720, 1280), (64, 128)),  # large: the largest area listed
    ((70, 70), (64, 64)),      # 96x96 would need upscaling: the next area down
])
def test_a_video_goes_to_the_nearest_ratio_at_the_largest_area_without_upscaling(source, bucket):
    assert parse_buckets(SPEC, spatial_factor=8).choose(*source) == bucket


def test_a_video_smaller_than_every_bucket_is_refused_unless_upscaling_is_allowed():
    with pytest.raises(ValueError, match="48x48 is smaller than every bucket .* smallest is 64x64.*--allow-upscale"):
        parse_buckets(SPEC, spatial_factor=8).choose(48, 48)
    assert parse_buckets(SPEC, spatial_factor=8, allow_upscale=True).choose(48, 48) == (64, 64)


def test_the_canonical_form_parses_to_the_same_spec():
    for text in (SPEC, "area=256;aspect=auto;frames=33,17;step=32", "frames=17 ; area=512,256"):
        spec = parse_buckets(text, spatial_factor=8)
        assert parse_buckets(str(spec), spatial_factor=8) == spec
    assert str(parse_buckets("frames=33,17;area=256", 8)) == "area=256;aspect=auto;frames=17,33;step=16"


@pytest.mark.parametrize("text, message", [
    ("aspect=1:1", "names no area="),
    ("area=256;step=20", "step=20 is not a multiple of the VAE's spatial factor 8; use 16 or 24"),
    ("area=256;aspect=wide", "bad aspect ratio 'wide'"),
    ("area=256;aspect=1:0", "bad aspect ratio '1:0'"),
    ("area=256,x", "comma list of positive integers"),
    ("area=8", "area=8 is below step=16"),
    ("area=256;area=512", "each key once"),
    ("size=256", "use area="),
])
def test_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(BucketSpecError, match=message.replace("(", r"\(")):
        parse_buckets(text, spatial_factor=8)
