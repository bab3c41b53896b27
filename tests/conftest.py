import pytest

from pipeline.ray_session import configure_ray_environment

configure_ray_environment()


@pytest.fixture(scope="session")
def local_ray():
    """One embedded local Ray for the whole session: starting it costs ~2.5 s and ~600 MB."""
    import ray

    from pipeline.ray_session import connect

    connect(None, init_kwargs={"num_cpus": 2})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def encoded_test_cache(tmp_path_factory, local_ray):
    """One real cache per session for the jobs that only read caches; tests that change it copy it."""
    from tests.caches import encode_test_cache

    return encode_test_cache(tmp_path_factory.mktemp("shards"), tmp_path_factory.mktemp("encoded_cache"))
