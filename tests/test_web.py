"""The daemon's HTTP endpoint: /metrics read back through a real Prometheus server
(Debian's prometheus package), health probes, the token, and hostile clients."""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from harness.daemon import Daemon, files, photo_bytes, wait_for, write_config
from nstd.web.server import MAX_CLIENTS, Endpoint, Probe

TOKEN = "s3cret-token-of-the-studio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class PrometheusServer:
    """Debian's Prometheus in a temporary folder, scraping one target every second."""

    def __init__(self, target: str):
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: install Debian's prometheus (make test does)")
        self.root = Path(tempfile.mkdtemp(prefix="nstd-prom-"))
        self.port = free_port()
        (self.root / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs: [{{job_name: nstd, static_configs: [{{targets: ['{target}']}}]}}]\n")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.root / 'prometheus.yml'}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "prometheus.log", "wb"))

    def query(self, expr: str) -> list[dict]:
        status, body = get(f"http://127.0.0.1:{self.port}/api/v1/query?query={urllib.parse.quote(expr)}")
        return json.loads(body)["data"]["result"] if status == 200 else []

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


def test_a_real_prometheus_reads_the_daemons_metrics(tmp_path, session_models):
    port = free_port()
    config = write_config(tmp_path, session_models, http={"listen": f"127.0.0.1:{port}"})
    # Prometheus first: it opens its storage while the daemon starts (its scrapes of a
    # target not up yet are no more than failed scrapes).
    prometheus = PrometheusServer(f"127.0.0.1:{port}")
    d = Daemon(config)
    try:
        d.start()
        base = f"http://127.0.0.1:{port}"
        d.wait_log("http_listening", timeout=60)  # it listens just after it says it started
        wait_for(lambda: get(base + "/readyz")[0] == 200, 60, "the daemon to be ready")
        assert json.loads(get(base + "/healthz")[1]) == {"ok": True, "reason": "alive"}
        (tmp_path / "inbox" / "p.jpg").write_bytes(photo_bytes(32, 32, 1))
        wait_for(lambda: len(files(tmp_path / "processed")) == 1, 120, "the photo")
        status, body = get(base + "/metrics")
        assert status == 200
        text = body.decode()
        assert 'nstd_jobs{state="done"} 2.0' in text and 'nstd_jobs_finished_total{style="ink"} 1.0' in text
        assert "nstd_job_compute_seconds_count 2.0" in text and "nstd_job_drop_to_output_seconds_count 2.0" in text
        assert "p.jpg" not in text  # labels are bounded: never a photo's name
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
        # A scrape from before the photo was done says fewer: wait for one from after it.
        done = wait_for(lambda: [r for r in prometheus.query('nstd_jobs{state="done"}') if r["value"][1] == "2"],
                        60, "Prometheus to scrape the finished jobs")
        assert done[0]["value"][1] == "2"
        workers = prometheus.query("nstd_worker_state == 1")
        assert {w["metric"]["device"] for w in workers} == {"cpu"}
        assert prometheus.query("nstd_paused")[0]["value"][1] == "0"
        assert d.stop() == 0
    finally:
        prometheus.close()
        if d.alive():
            d.kill()


def test_the_metrics_of_a_busy_journal_are_bounded_and_well_formed(tmp_path):
    """Histograms, the queue by size and priority, and each worker's slots, from a journal
    filled by hand; promtool checks the whole exposition."""
    from prometheus_client import generate_latest

    from nstd.daemon.journal import Journal, JobSpec, WorkerInfo, WorkerState
    from nstd.web.metrics import Live, Reader, registry

    j = Journal(tmp_path / "j.db")
    sizes = [(32 + 8 * (n % 13), 32) for n in range(40)]  # 13 sizes: more than the label lists
    for n, (w, h) in enumerate(sizes):
        j.add_input(f"p{n}.jpg", f"s{n}", "sp", [JobSpec("ink", "x", {}, w, h, f"k{w}", priority=n % 3)], now=100.0)
    j.beat(WorkerInfo("h1:1:cpu", "h1", "cpu", None), WorkerState.WORKING, 150.0)
    running = j.claim("k32", 3, "b1", 150.0, owner="h1:1:cpu")
    j.progress([x.id for x in running], 10, 100, 2.5, 190.0)
    j.finish(running[0].id, "ink/p0.jpg", "b1")
    j.close()
    live = Live(lambda: None, lambda: 0, lambda: 0)
    text = generate_latest(registry(Reader(tmp_path / "j.db"), live)).decode()
    assert 'nstd_worker_slots_in_use{device="cpu",host="h1"} 2.0' in text
    assert 'nstd_worker_iterations_per_second{device="cpu",host="h1"} 2.5' in text
    assert 'nstd_job_compute_seconds_bucket{le="+Inf"} 1.0' in text
    sizes_listed = [line for line in text.splitlines() if line.startswith("nstd_queued_by_size{")]
    assert len(sizes_listed) == 11 and any('size="other"' in line for line in sizes_listed)
    assert {line.split('"')[1] for line in text.splitlines() if line.startswith("nstd_queued_by_priority{")} \
        == {"0", "1", "2"}
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_listening_address_off_loopback_needs_a_token(tmp_path, session_models):
    config = write_config(tmp_path, session_models, http={"listen": "0.0.0.0:9650"})
    run = subprocess.run([sys.executable, "-m", "nstd", "run", "--config", str(config)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("nstd: error: http.listen: 0.0.0.0 is not loopback; set http.token_file")


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    Gauge("nstd_test", "a test gauge", registry=registry).set(3)
    e = Endpoint("127.0.0.1", 0, registry, Probe(lambda: (True, "alive"), lambda: (False, "paused: a test")),
                 TOKEN).start()
    yield f"http://127.0.0.1:{e.port}", e.port
    e.stop()


def test_the_token_is_asked_of_every_request(endpoint):
    base, _ = endpoint
    for path in ("/metrics", "/healthz", "/nowhere"):
        status, body = get(base + path)
        assert status == 401 and json.loads(body)["reason"] == "a bearer token is required"
        assert get(base + path, "the-wrong-token-entirely")[0] == 401
    status, body = get(base + "/metrics", TOKEN)
    assert status == 200 and b"nstd_test 3.0" in body
    status, body = get(base + "/readyz", TOKEN)
    assert status == 503 and json.loads(body) == {"ok": False, "reason": "paused: a test"}


def test_hostile_requests_get_a_4xx_and_never_stall_it(endpoint):
    base, port = endpoint
    assert get(base + "/nowhere", TOKEN)[0] == 404
    assert get(base + "/" + "a" * 70000, TOKEN)[0] == 414
    req = urllib.request.Request(base + "/metrics", data=b"x", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 405
    # Clients that connect and send half a request hold at most the bounded slots, for at
    # most the timeout: the others are answered 503 at once, and the endpoint answers again.
    idle = []
    for _ in range(MAX_CLIENTS + 4):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        idle.append(s)
    try:
        status, _ = get(base + "/healthz", TOKEN)
        assert status == 503  # every slot taken by a slow client: refused at once, not queued
        wait_for(lambda: get(base + "/healthz", TOKEN)[0] == 200, 30, "the slow clients to time out")
    finally:
        for s in idle:
            s.close()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"NONSENSE\r\n\r\n")
    raw.settimeout(10)
    assert raw.recv(100).startswith(b"HTTP/1.1 400")
    raw.close()


def test_without_a_token_it_answers_only_to_a_loopback_name():
    """A page on another site can make a browser reach 127.0.0.1 under that site's name
    (DNS rebinding); without a token, only loopback names are answered."""
    registry = CollectorRegistry()
    Gauge("nstd_test", "a test gauge", registry=registry).set(3)
    e = Endpoint("127.0.0.1", 0, registry, Probe(lambda: (True, "alive"), lambda: (True, "ok")), None).start()
    try:
        def status(host: str) -> int:
            conn = socket.create_connection(("127.0.0.1", e.port))
            conn.sendall(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            conn.settimeout(10)
            line = conn.recv(100).split(b"\r\n")[0]
            conn.close()
            return int(line.split()[1])

        assert [status(h) for h in (f"127.0.0.1:{e.port}", f"localhost:{e.port}", f"[::1]:{e.port}")] == [200] * 3
        assert status(f"attacker.example:{e.port}") == 403 and status("10.0.0.5") == 403
    finally:
        e.stop()
