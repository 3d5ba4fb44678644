"""imgflow's alert rules and the Grafana dashboard's queries, checked by promtool.

deploy/prometheus/alerts.yaml is the chart's PrometheusRule rendered for release imgflow in
namespace imgflow; promtool checks it and runs its unit tests (deploy/prometheus/alerts_test.yaml:
synthetic series under which each alert fires, and others under which it stays silent). Every
metric a rule or a dashboard panel selects must be one that the API, the workers or the operator
export. promtool comes from scripts/tools.sh; without it these tests fail.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import imgflow.api.metrics
import imgflow.core.dbmetrics
import imgflow.operator.metrics
import imgflow.worker.metrics
from imgflow.harness.helm_chart import CHART, find, one, render
from imgflow.harness.paths import ROOT

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yaml"
RULE_TESTS = RULES_DIR / "alerts_test.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
METRICS_MODULES = (
    imgflow.api.metrics,
    imgflow.worker.metrics,
    imgflow.operator.metrics,
    imgflow.core.dbmetrics,
)
# A selector: a metric name followed by its label matchers.
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    path = ROOT / ".tools" / "bin" / "promtool"
    assert path.exists(), f"{path} is missing: run scripts/tools.sh promtool"
    return subprocess.run([str(path), *args], capture_output=True, text=True, cwd=cwd)


def rules(groups: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in groups["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules(yaml.safe_load(RULES.read_text()))}


def exported_metrics() -> set[str]:
    """The series names imgflow's processes export (and Prometheus's own `up` per target)."""
    names = {"up"}
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # Grafana's variables, as Grafana fills them in
    return [q.replace("$namespace", ".+").replace("$__rate_interval", "1m") for q in queries]


def test_the_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout, proc.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules whose failure threshold is 0.3
    miss the alert at 20 % failures."""
    changed = RULES.read_text().replace("> 0.1\n", "> 0.3\n")
    assert changed != RULES.read_text()
    (tmp_path / "alerts.yaml").write_text(changed)
    (tmp_path / "alerts_test.yaml").write_text(RULE_TESTS.read_text())
    proc = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "ImgflowJobFailuresHigh" in proc.stdout + proc.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for name in alerts():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} is never seen firing"
        assert any(not c["exp_alerts"] for c in mine), f"{name} is never seen silent"
    assert {c["alertname"] for c in cases} <= set(alerts())


def test_the_plain_rules_file_is_what_the_chart_renders() -> None:
    docs = render({"prometheusRule": {"enabled": True}}, release="imgflow", namespace="imgflow")
    rule = one(docs, "PrometheusRule", "imgflow")
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "run deploy/prometheus/render.sh"


def test_the_alerts_cover_what_operators_watch() -> None:
    assert set(alerts()) == {
        "ImgflowBacklogGrowing",
        "ImgflowBacklogStalled",
        "ImgflowJobFailuresHigh",
        "ImgflowDeadLetters",
        "ImgflowWorkersAtMaxReplicas",
        "ImgflowNoWorker",
        "ImgflowOperatorDown",
        "ImgflowOperatorRedisUnreachable",
        "ImgflowApiErrors",
        "ImgflowBackendUnreachable",
        "ImgflowJobWaitingTooLong",
        "ImgflowWebhooksFailing",
    }
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_has_a_runbook_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    headings = set(re.findall(r"^### (Imgflow\w+)$", readme, re.M))
    assert headings == set(alerts())
    for name, rule in alerts().items():
        assert rule["annotations"]["runbook_url"].endswith(f"README.md#{name.lower()}"), name


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_only_metrics_the_code_exports_are_queried(source: str) -> None:
    assert METRICS_MODULES  # imported for their registrations
    queries = [r["expr"] for r in alerts().values()] if source == "rules" else dashboard_queries()
    selected = {name for q in queries for name in SELECTOR.findall(q)}
    assert selected and selected <= exported_metrics(), selected - exported_metrics()


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    recording = [{"record": f"imgflow:dashboard_query:{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout
    path.write_text(path.read_text().replace("sum(", "sum((", 1))  # and a broken one is refused
    assert promtool("check", "rules", str(path)).returncode == 1


# --- the chart's PrometheusRule ---------------------------------------------------------------


def chart_alerts(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    docs = render({"prometheusRule": {"enabled": True, **values.pop("prometheusRule", {})}, **values})
    return {r["alert"]: r for r in rules(one(docs, "PrometheusRule", "rel-imgflow")["spec"])}


def test_the_prometheus_rule_is_off_by_default() -> None:
    assert not find(render(), "PrometheusRule")


def test_the_chart_rules_follow_the_release_and_the_values() -> None:
    rendered = chart_alerts(
        {
            "worker": {"autoscaling": {"maxReplicas": 4}},
            "prometheusRule": {
                "labels": {"release": "kps"},
                "alertLabels": {"team": "images"},
                "failureRatio": 0.25,
            },
        }
    )
    assert (
        'job="rel-imgflow-operator-metrics", namespace="imgflow"' in rendered["ImgflowBacklogGrowing"]["expr"]
    )
    assert 'deployment="rel-imgflow-worker"} >= 4' in rendered["ImgflowWorkersAtMaxReplicas"]["expr"]
    assert "> 0.25" in rendered["ImgflowJobFailuresHigh"]["expr"]
    assert all(r["labels"]["team"] == "images" for r in rendered.values())
    rule = one(
        render({"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}),
        "PrometheusRule",
        "rel-imgflow",
    )
    assert rule["metadata"]["labels"]["release"] == "kps"


def test_the_chart_leaves_out_alerts_about_what_it_does_not_run() -> None:
    fixed = chart_alerts({"worker": {"autoscaling": {"enabled": False}}})
    assert "ImgflowWorkersAtMaxReplicas" not in fixed and "ImgflowOperatorDown" in fixed
    without = chart_alerts({"operator": {"enabled": False}})
    assert not {
        "ImgflowOperatorDown",
        "ImgflowOperatorRedisUnreachable",
        "ImgflowWorkersAtMaxReplicas",
    } & set(without)
