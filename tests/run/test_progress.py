"""Progress moves per sample, not only per shard: the step reports as it goes and the bar adds it up."""

from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.encode.shard_encoder import ShardEncoder
from pipeline.run.job_plan import plan_job
from pipeline.run.progress import JobProgress
from pipeline.run.runner import run_encode_job
from tests.media import encode_mp4, moving_pattern, write_tar

SETTINGS = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=4, resolution="32",
                          clips_per_video=2, scoring=ScoreSettings(scores=()))


def _shard(path):
    samples = [(f"v{i}", {"mp4": encode_mp4(moving_pattern(12, 48, 64, seed=i))}) for i in range(3)]
    samples.insert(1, ("junk", {"mp4": b"not a video"}))
    return write_tar(path, samples)


def test_a_shard_reports_its_clips_and_error_rows_after_each_sample(tmp_path):
    _shard(tmp_path / "shard-00000.tar")
    plan = plan_job(str(tmp_path / "shard-00000.tar"), str(tmp_path / "cache"), SETTINGS)
    encoder = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1)
    reports: list[tuple[int, int]] = []
    outcome = encoder.process(plan.tasks[0], on_progress=lambda clips, errors: reports.append((clips, errors)))
    # One report per sample as it completes (an error row at once, clips when their batch is encoded).
    assert len(reports) == 4
    assert reports == sorted(reports) and all(a[1] <= b[1] for a, b in zip(reports, reports[1:]))
    assert reports[-1] == (outcome.clips, outcome.error_rows) == (6, 1)


def test_the_bar_counts_running_clips_once_and_drops_them_when_their_shard_commits():
    progress = JobProgress(total_shards=2, enabled=False)
    progress.running(3, 1)
    assert progress.shown == (3, 1)
    progress.shard_done(4, 1, running=(2, 0))
    assert progress.shown == (6, 1)
    progress.close()


def test_a_job_with_its_progress_bar_on_encodes_every_clip(tmp_path, local_ray, capsys):
    for index in range(2):
        _shard(tmp_path / f"shard-{index:05d}.tar")
    report = run_encode_job(str(tmp_path / "shard-*.tar"), str(tmp_path / "cache"), SETTINGS,
                            RunSettings(num_actors=1, cpus_per_actor=1, progress=True))
    assert report.exit_status == 0 and report.totals["clips"] == 12
    assert "clips=12" in capsys.readouterr().err
