"""Decoding ahead on threads: results in input order, within the byte budget, failures reaching the consumer."""

import random
import threading
import time

import pytest

from pipeline.encode.decode_pool import OrderedDecodePool


def _pool(decode, workers=3, budget=100, max_pending=8, size_of=len) -> OrderedDecodePool:
    return OrderedDecodePool(decode, size_of, workers=workers, budget_bytes=budget, max_pending=max_pending)


def test_results_come_in_input_order_whatever_finishes_first():
    delays = random.Random(0)

    def decode(item: int) -> bytes:
        time.sleep(delays.random() / 200)  # finishing order scrambled on purpose, not a timing assertion
        return bytes([item])

    assert [r[0] for r in _pool(decode).map(range(40))] == list(range(40))


def test_held_bytes_stay_within_the_budget_and_an_oversized_item_goes_alone():
    running, most_running = 0, 0
    lock = threading.Lock()

    def decode(size: int) -> bytes:
        nonlocal running, most_running
        with lock:
            running += 1
            most_running = max(most_running, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        return bytes(size)

    pool = _pool(decode, workers=4, budget=100)
    sizes = [30] * 20
    taken = []
    for result in pool.map(sizes):
        time.sleep(0.005)  # a slow consumer, so finished results pile up if the budget lets them
        taken.append(len(result))
    assert taken == sizes
    assert pool.peak_held_bytes <= 100
    assert most_running <= 3  # 3 x 30 bytes fit in 100, a 4th would not
    alone = _pool(lambda size: bytes(size), budget=10)
    assert [len(r) for r in alone.map([50, 5, 50])] == [50, 5, 50]


def test_a_decode_failure_reaches_the_consumer_after_the_results_before_it():
    def decode(item: int) -> bytes:
        if item == 3:
            raise RuntimeError("decoder crashed on 3")
        return bytes([item])

    taken = []
    with pytest.raises(RuntimeError, match="crashed on 3"):
        for result in _pool(decode).map(range(6)):
            taken.append(result[0])
    assert taken == [0, 1, 2]


def test_a_failing_input_iterator_reaches_the_consumer():
    def items():
        yield 1
        raise OSError("tar read failed")

    taken = []
    with pytest.raises(OSError, match="tar read failed"):
        for result in _pool(lambda item: bytes([item])).map(items()):
            taken.append(result[0])
    assert taken == [1]


def test_waited_seconds_counts_the_consumer_waiting():
    pool = _pool(lambda item: (time.sleep(0.01), bytes([item]))[1], workers=1)
    assert len(list(pool.map(range(5)))) == 5
    assert pool.waited_seconds > 0


def test_two_decode_workers_give_the_rows_of_one_byte_for_byte(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.encode.scoring import ScoreSettings
    from pipeline.encode.settings import EncodeSettings
    from pipeline.encode.shard_encoder import ShardEncoder
    from pipeline.run.job_plan import plan_job
    from tests.media import encode_mp4, moving_pattern, write_tar

    # Lengths and sizes differ, so decodes finish out of order; one sample is broken.
    samples = [(f"s{i}", {"mp4": encode_mp4(moving_pattern(8 + 3 * (i % 4), 48 + 16 * (i % 3), 64, seed=i))})
               for i in range(8)]
    samples.insert(3, ("broken", {"mp4": b"\x00" * 500}))
    write_tar(tmp_path / "shard-00000.tar", samples)
    settings = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=4, clips_per_video=2,
                              resolution="32", scoring=ScoreSettings(scores=("psnr",)))
    tables, seconds = {}, {}
    for workers in (1, 2):
        plan = plan_job(str(tmp_path / "shard-00000.tar"), str(tmp_path / f"cache-{workers}"), settings)
        encoder = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1, decode_workers=workers,
                               decode_buffer_mb=1)
        outcome = encoder.process(plan.tasks[0])
        assert (outcome.samples, outcome.error_rows) == (9, 1)
        tables[workers] = pq.read_table(tmp_path / f"cache-{workers}" / "shard-00000.parquet")
        seconds[workers] = outcome.seconds
    assert tables[2].column("key").to_pylist() == tables[1].column("key").to_pylist()
    assert tables[2].equals(tables[1])
    assert {"video_decode", "model_waited", "vae_encode"} <= set(seconds[2])


_MEASURE_PEAK = """
import os, sys, threading, time
from pipeline.encode.decode_pool import OrderedDecodePool
from pipeline.source.video_decode import ClipSampling, Resolution, decode_clips

budget, videos = int(sys.argv[1]), [open(path, "rb").read() for path in sys.argv[2:]]
decode = lambda video: decode_clips(video, ClipSampling(8), Resolution(), 8)
size_of = lambda clips: sum(clip.frames.nbytes for clip in clips)
sample = size_of(decode(videos[0]))  # also warms the decoder and the allocator
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
base = peak = rss()
done = False

def watch():
    global peak
    while not done:
        peak = max(peak, rss())
        time.sleep(0.001)

watcher = threading.Thread(target=watch)
watcher.start()
pool = OrderedDecodePool(decode, size_of, workers=2, budget_bytes=budget, max_pending=8)
for index, clips in enumerate(pool.map(videos)):
    # The consumer stalls on the first result until the decoders have run as far ahead as the budget lets them
    # (4 samples at most), so what is held is what the budget allows, not what a slow machine manages.
    while index == 0 and pool.peak_held_bytes < min(4, budget // sample) * sample:
        time.sleep(0.01)
    del clips
done = True
watcher.join()
print(peak - base, pool.peak_held_bytes, sample)
"""


def test_decoded_bytes_held_stay_within_the_buffer_measured_in_process_memory(tmp_path):
    """720p frames at native size (22 MB a sample), 2 workers: with a small --decode-buffer-mb the process's
    resident memory grows by the budget plus a running decode's working copies, far less than with a large one."""
    import os
    import subprocess
    import sys

    from tests.media import encode_mp4, moving_pattern
    from tests.processes import HUNG_AFTER_S, ROOT

    paths = []
    for index in range(10):
        paths.append(tmp_path / f"v{index}.mp4")
        paths[-1].write_bytes(encode_mp4(moving_pattern(8, 720, 1280, seed=index), crf=28))
    measured = {}
    for budget in (30 * 2**20, 2**30):
        # Resident memory should follow what is live: one malloc arena, so memory a worker thread freed is reused
        # rather than kept per thread; and every buffer of 1 MiB or more mapped on its own and unmapped when freed,
        # where glibc would otherwise raise its mmap threshold past a 22 MB sample and keep freed samples in a
        # heap whose fragmentation depends on the threads' timing (a failure seen once under load).
        result = subprocess.run([sys.executable, "-c", _MEASURE_PEAK, str(budget), *map(str, paths)], cwd=ROOT,
                                capture_output=True, text=True, timeout=HUNG_AFTER_S, check=True,
                                env={**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(2**20)})
        measured[budget] = [int(value) for value in result.stdout.split()]
    (small_growth, small_held, sample), (large_growth, large_held, _) = measured[30 * 2**20], measured[2**30]
    assert sample > 20 * 2**20
    assert small_held <= 30 * 2**20 and large_held >= 4 * sample
    # Beyond what is held: the sample the consumer has, and the running decode's two full-size copies of its
    # frames (decord's and numpy's) with the decoder's own buffers.
    assert small_growth <= 30 * 2**20 + 4 * sample, measured
    # 4 samples held against 1: the measurement sees the difference (less the allocator's reuse).
    assert large_growth >= small_growth + 2 * sample, measured
