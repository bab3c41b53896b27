"""A small real cache for the tests of the jobs that read caches (filter, report, inspect)."""

from pathlib import Path

from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.run.runner import run_encode_job
from tests.media import encode_mp4, moving_pattern, write_tar

# PSNR of the tiny random VAE on these clips is about 11 dB: 11.2 splits them into passed and rejected.
MIN_PSNR = 11.2


def encode_test_cache(shards: Path, cache: Path) -> Path:
    """Two shards of good and broken samples, encoded with previews and a PSNR threshold."""
    for shard in range(2):
        samples = [(f"s{shard}v{i}", {"mp4": encode_mp4(moving_pattern(12, 48, 64, seed=shard * 10 + i)),
                                      "txt": f"clip {shard}/{i}".encode()}) for i in range(4)]
        samples += [(f"s{shard}junk", {"mp4": b"\x00not a video" * 40}),
                    (f"s{shard}short", {"mp4": encode_mp4(moving_pattern(2, 48, 64, seed=99))}),
                    (f"s{shard}none", {"txt": b"no video"})]
        write_tar(shards / f"shard-{shard:05d}.tar", samples)
    settings = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=4, resolution="32",
                              keep_previews=True, scoring=ScoreSettings(min_psnr=MIN_PSNR))
    report = run_encode_job(str(shards / "shard-*.tar"), str(cache), settings,
                            RunSettings(num_actors=2, cpus_per_actor=1, progress=False))
    assert report.exit_status == 0
    return cache
