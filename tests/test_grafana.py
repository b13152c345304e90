"""docs/grafana-nstd.json: it imports as Grafana's export format, every query names a series
that nstd's /metrics really has (from a journal filled by hand), and every query is PromQL
that promtool parses."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nstd.daemon.journal import JobSpec, Journal, WorkerInfo, WorkerState
from nstd.web.metrics import Live, Reader, registry

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-nstd.json"
NAME = re.compile(r"\bnstd_[a-z0-9_]+")
# What Grafana puts in place of each variable, for promtool: the dashboard's own variables
# at one of their values, and Grafana's built-in interval.
VARIABLES = {"journal": "max", "host": ".*", "__rate_interval": "5m"}
VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(doc: dict) -> list[dict]:
    """Every panel, those inside a collapsed row too."""
    out = []
    for panel in doc["panels"]:
        out += [panel, *panel.get("panels", [])]
    return out


def exprs(doc: dict) -> list[str]:
    return [t["expr"] for p in panels(doc) for t in p.get("targets", [])]


def variable_queries(doc: dict) -> list[str]:
    queries = [v.get("query") for v in doc["templating"]["list"] if v["type"] == "query"]
    return [q["query"] if isinstance(q, dict) else q for q in queries]


def filled_exposition(tmp_path: Path) -> dict[str, str]:
    """The sample names of a /metrics answer from a journal with some of everything: jobs
    queued at two sizes and priorities, a batch running with its rate, a job published, one
    failed, one cancelled. Each name maps to its family's type."""
    j = Journal(tmp_path / "j.db")
    for n in range(6):
        j.add_input(f"p{n}.jpg", f"s{n}", "sp", [JobSpec("ink", "x", {}, 32 + 8 * (n % 2), 32, f"k{n % 2}",
                                                         priority=n % 3)], now=100.0)
    j.beat(WorkerInfo("h1:1:cpu", "h1", "cpu", None), WorkerState.WORKING, 150.0)
    running = j.claim("k0", 3, "b1", 150.0, owner="h1:1:cpu")
    j.progress([x.id for x in running], 10, 100, 2.5, 190.0)
    j.finish(running[0].id, "ink/p0.jpg", "b1")
    j.fail(running[1].id, "broken")
    [queued, *_] = j.queued_jobs()
    j.cancel([queued.id], "someone@h1", 160.0)
    j.close()
    live = Live(lambda: None, lambda: 0, lambda: 0)
    text = generate_latest(registry(Reader(tmp_path / "j.db"), live)).decode()
    return {s.name: family.type for family in text_string_to_metric_families(text) for s in family.samples}


def test_it_is_grafanas_import_format_with_a_prometheus_input():
    doc = dashboard()
    [source] = doc["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    assert doc["id"] is None and doc["uid"] and 36 <= doc["schemaVersion"] <= 41
    shown = [p for p in panels(doc) if p["type"] != "row"]
    assert len({p["id"] for p in panels(doc)}) == len(panels(doc))
    for p in shown:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
    # Laid out on Grafana's 24 columns without two panels on one cell.
    cells = set()
    for p in panels(doc):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        taken = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        cells |= taken


def test_every_series_the_dashboard_asks_for_is_in_the_metrics(tmp_path):
    served = filled_exposition(tmp_path)
    asked = {name for expr in exprs(dashboard()) + variable_queries(dashboard()) for name in NAME.findall(expr)}
    assert len(asked) >= 20
    assert asked - served.keys() == set(), f"not in /metrics: {sorted(asked - served.keys())}"
    # Every family nstd serves is on the dashboard, so a new one is not forgotten here.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in served}
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in asked}
    assert families - shown == set(), f"not on the dashboard: {sorted(families - shown)}"


def test_rates_are_taken_of_counters_and_histograms_alone(tmp_path):
    served = filled_exposition(tmp_path)
    for expr in exprs(dashboard()):
        for name in re.findall(r"\b(?:rate|increase)\((nstd_\w+)", expr):
            assert served[name] in ("counter", "histogram"), f"{name} is a {served[name]}: {expr}"


def test_every_query_is_promql_that_promtool_parses(tmp_path):
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: install Debian's prometheus (make test does)")
    queries = [VARIABLE.sub(lambda m: VARIABLES[m.group(1)], e) for e in exprs(dashboard())]
    rules = {"groups": [{"name": "grafana-nstd",
                         "rules": [{"record": f"nstd:panel_{i}", "expr": q} for i, q in enumerate(queries)]}]}
    (tmp_path / "rules.yml").write_text(json.dumps(rules))  # JSON is YAML
    check = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(queries)} rules found" in check.stdout


def test_the_promtool_check_catches_a_broken_query(tmp_path):
    rules = {"groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum by (le (nstd_jobs)"}]}]}
    (tmp_path / "rules.yml").write_text(json.dumps(rules))
    check = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True)
    assert check.returncode != 0
