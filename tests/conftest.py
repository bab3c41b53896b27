import pytest

from pipeline.run.ray_session import configure_ray_environment

configure_ray_environment()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first: with `-n 2` each worker takes whole files in this order, so the long
    files start early and the short ones fill in beside them instead of one long file finishing alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def local_ray():
    """One embedded local Ray for the whole session: starting it costs ~2.5 s and ~600 MB."""
    import ray

    from pipeline.run.ray_session import connect

    connect(None, init_kwargs={"num_cpus": 2})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def encoded_test_cache(tmp_path_factory, local_ray):
    """One real cache per session for the jobs that only read caches; tests that change it copy it."""
    from tests.caches import encode_test_cache

    return encode_test_cache(tmp_path_factory.mktemp("shards"), tmp_path_factory.mktemp("encoded_cache"))


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on 127.0.0.1 (moto's server mode), for this process and the jobs it starts:
    yields the environment that points boto/s3fs at it, also set in os.environ meanwhile."""
    import os

    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()
