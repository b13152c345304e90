import os
import threading

# OpenMP's threads sleep when they have no work rather than spin for it: read once, as torch
# loads its OpenMP runtime, so set before the import. The CPU is shared with the daemons
# the tests start and whatever else runs; a spinning thread that loses its core holds up
# every parallel step of the tests' own optimisations (a 4-iteration run at 32 px took
# 8 s rather than 1 s on the 2-core CPU with another process busy). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from nstd.engine.vgg import VGGFeatures
from nstd.engine.types import BatchSettings

from harness.synthetic import random_vgg_state_dict

# Two cores: keep torch from oversubscribing them when pytest runs.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def vgg_sd():
    return random_vgg_state_dict()


@pytest.fixture(scope="session")
def tiny_model(vgg_sd):
    # torchvision preprocessing keeps the random network's losses in a tame range.
    return VGGFeatures(vgg_sd, "torchvision", BatchSettings().layers, model_id="random")


@pytest.fixture
def service(tmp_path, session_models):
    """A prepared daemon in-process, on a random-weight model, with a worker not started:
    tests drive it step by step. The models folder is the session's (nothing writes to it
    once made); each test has its own folders and journal."""
    from nstd import config
    from nstd.daemon.service import Service
    from nstd.daemon.worker import Worker

    from harness.daemon import write_config

    cfg = config.load(write_config(tmp_path, session_models, styles={"ink": {"image": "style.png"}},
                                   worker={"max_attempts": 2, "retry_backoff": 0, "max_batch": 4,
                                           "batch_window": 0}))
    svc = Service(cfg)
    svc.prepare()
    svc.worker = Worker(cfg, lambda: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
    yield svc
    svc.close()


@pytest.fixture
def settle(service):
    """The service's settle time: how long a file must hold still to be taken in."""
    return service.inputs.settle.seconds


@pytest.fixture
def models(session_models):
    """A models folder holding the random-weight VGG19 as "random": the session's, made
    once (the same weights as vgg_sd; nothing writes to a models folder once made)."""
    return session_models


@pytest.fixture(scope="session")
def session_models(tmp_path_factory):
    """The random-weight models folder, made once for the tests that start daemon processes."""
    from nstd.cli import main

    d = tmp_path_factory.mktemp("models")
    torch.save(random_vgg_state_dict(), d / "random.pth")
    assert main(["weights", "import", str(d / "random.pth"), "--name", "random", "--preprocessing",
                 "torchvision", "--models-dir", str(d)]) == 0
    return d


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session, from Debian's postgresql package."""
    from harness.pg import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_target(request, tmp_path):
    """Where a journal lives, once per backend: the same tests hold for both."""
    if request.param == "sqlite":
        return tmp_path / "j.db"
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture
def hosts(tmp_path, pg_server, session_models):
    """Two prepared daemons on one PostgreSQL journal (test_hosts.make_hosts). Without
    refills, driven one after the other: the schedulers alone decide which host takes
    what (with them, the first host's batch would take every queued photo)."""
    from test_hosts import make_hosts

    services = make_hosts(tmp_path, pg_server.new_database(), refill=False, models=session_models)
    yield services
    for svc in services:
        svc.close()


@pytest.fixture(scope="session")
def caffe_models():
    """The models folder holding the real Caffe VGG19, fetched as `make run` fetches it,
    for the tests where the real network is the point; in CI its absence is a failure."""
    from nstd import weights
    from nstd.errors import WeightsError

    models = weights.default_models_dir()
    try:
        weights.verify(models, "caffe")
    except WeightsError:
        try:
            weights.fetch(models)
        except WeightsError as e:
            if os.environ.get("CI"):
                pytest.fail(f"real weights are required in CI: {e}")
            pytest.skip(f"real weights not available here: {e}")
    return models
