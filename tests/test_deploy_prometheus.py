"""deploy/prometheus and deploy/grafana, checked by Prometheus's own tools (no server, no broker).

- `promtool check config` and `promtool check rules` pass on the files as shipped;
- `promtool test rules` proves each alert fires on the situation it names and stays quiet otherwise
  (synthetic series; annotations are stripped for the comparison, their templates are checked above);
- the PromQL metric-name extraction that tests/test_deploy_stack.py uses against a live scrape;
- the dashboard: provisioned datasource uid, every panel has a query, every panel requested is there.

promtool comes from Debian's prometheus package (`make prometheus`); without it those tests skip.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests import deploy_support as ds

needs_promtool = pytest.mark.skipif(ds.promtool_binary() is None,
                                    reason="needs promtool: run `make prometheus` (Debian's prometheus package)")


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([ds.promtool_binary(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


# --------------------------------------------------------------------------- promtool check


@needs_promtool
def test_promtool_check_config():
    r = promtool("check", "config", str(ds.PROMETHEUS_DIR / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr


@needs_promtool
def test_promtool_check_rules():
    r = promtool("check", "rules", str(ds.PROMETHEUS_DIR / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_alerts_cover_the_required_situations():
    names = {name for name, _ in ds.alert_exprs()}
    assert {"StreamerConsumerLagGrowing", "StreamerDeadLetters", "StreamerNoPredictions", "StreamerRestoreSlow",
            "StreamerDown"} <= names
    rules = yaml.safe_load((ds.PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


# --------------------------------------------------------------------------- promtool test rules

LAG = "streamer_kafka_consumer_lag_records"


def _series(name: str, values: str, **labels) -> dict:
    labels = {"job": "streamer", "instance": "a:9100", **labels}
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def _restore_histogram(seconds_bucket: str) -> list[dict]:
    """Restore-duration histogram where every restore falls in bucket `seconds_bucket` (one a minute)."""
    buckets = ["0.001", "1", "10", "30", "60", "120", "+Inf"]
    out = []
    for le in buckets:
        inside = le == "+Inf" or float(le) >= float(seconds_bucket)
        out.append(_series("streamer_kafka_restore_duration_seconds_bucket", "0+1x40" if inside else "0x40", le=le))
    return out


RULE_TESTS = [
    # (name, input series, eval time, alert, expected to fire)
    ("down fires after 1m", [_series("up", "0x10")], "2m", "StreamerDown", True),
    ("up is quiet", [_series("up", "1x10")], "2m", "StreamerDown", False),
    ("no replica at all", [{"series": 'up{job="prometheus", instance="localhost:9090"}', "values": "1x10"}], "3m",
     "StreamerNoReplicas", True),
    ("one replica up is enough", [_series("up", "1x10"), _series("up", "0x10", instance="b:9100")], "3m",
     "StreamerNoReplicas", False),
    ("lag above 1000 and growing for 10m", [_series(LAG, "2000+100x60", partition="0")], "25m",
     "StreamerConsumerLagGrowing", True),
    ("large but flat lag is quiet", [_series(LAG, "5000x60", partition="0")], "25m",
     "StreamerConsumerLagGrowing", False),
    ("small growing lag is quiet", [_series(LAG, "0+10x60", partition="0")], "25m",
     "StreamerConsumerLagGrowing", False),
    ("10% dead letters", [_series("streamer_events_total", "0+600x40", outcome="applied"),
                          _series("streamer_dead_letters_total", "0+60x40", reason="invalid_json")], "12m",
     "StreamerDeadLetters", True),
    ("0.1% dead letters is quiet", [_series("streamer_events_total", "0+6000x40", outcome="applied"),
                                    _series("streamer_dead_letters_total", "0+6x40", reason="invalid_json")], "12m",
     "StreamerDeadLetters", False),
    ("events but no predictions", [_series("streamer_events_total", "0+600x40", outcome="invalid"),
                                   _series("streamer_predictions_total", "0x40")], "12m",
     "StreamerNoPredictions", True),
    ("lag waiting and a stuck replica", [_series(LAG, "500x40", partition="1"),
                                         _series("streamer_events_total", "7x40", outcome="applied"),
                                         _series("streamer_predictions_total", "7x40")], "12m",
     "StreamerNoPredictions", True),
    ("predictions flowing", [_series("streamer_events_total", "0+600x40", outcome="applied"),
                             _series(LAG, "500x40", partition="1"),
                             _series("streamer_predictions_total", "0+600x40")], "12m",
     "StreamerNoPredictions", False),
    ("idle: no lag, no events", [_series(LAG, "0x40", partition="1"),
                                 _series("streamer_events_total", "7x40", outcome="applied"),
                                 _series("streamer_predictions_total", "7x40")], "12m",
     "StreamerNoPredictions", False),
    ("restores take a minute", _restore_histogram("60"), "10m", "StreamerRestoreSlow", True),
    ("restores take a second", _restore_histogram("1"), "10m", "StreamerRestoreSlow", False),
    ("checkpoints failing", [_series("streamer_kafka_checkpoints_total", "0+1x40", outcome="failed")], "12m",
     "StreamerCheckpointsFailing", True),
    ("checkpoints fine", [_series("streamer_kafka_checkpoints_total", "0x40", outcome="failed"),
                          _series("streamer_kafka_checkpoints_total", "0+10x40", outcome="ok")], "12m",
     "StreamerCheckpointsFailing", False),
    ("a split stream", [_series("streamer_split_streams_total", "0+1x40")], "12m", "StreamerRoutingMistakes", True),
    ("messages outside their murmur2 partition", [_series("streamer_kafka_partitioner_mismatch_total", "0+5x40")],
     "12m", "StreamerRoutingMistakes", True),
    ("keys and partitions fine", [_series("streamer_split_streams_total", "3x40"),
                                  _series("streamer_kafka_partitioner_mismatch_total", "0x40")], "30m",
     "StreamerRoutingMistakes", False),
    ("an internal error", [_series("streamer_dead_letters_total", "0x5 1x35", reason="internal_error")], "5m",
     "StreamerInternalErrors", True),
    ("only schema dead letters", [_series("streamer_dead_letters_total", "0+9x40", reason="invalid_json"),
                                  _series("streamer_dead_letters_total", "0x40", reason="internal_error")], "12m",
     "StreamerInternalErrors", False),
]


@needs_promtool
def test_each_alert_fires_on_its_situation_and_only_then(tmp_path):
    rules = yaml.safe_load((ds.PROMETHEUS_DIR / "alerts.yml").read_text())
    severity = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # templates are checked by `promtool check rules`
            severity[rule["alert"]] = rule["labels"]["severity"]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    tested = set()
    tests = []
    for name, series, at, alert, fires in RULE_TESTS:
        tested.add(alert)
        expected = []
        if fires:
            labels = {"severity": severity[alert]}
            if alert in ("StreamerDown", "StreamerCheckpointsFailing"):
                src = series[0]["series"]
                labels.update(dict(kv.split("=", 1) for kv in src[src.index("{") + 1:-1].split(",")))
                labels = {k: v.strip('"') for k, v in labels.items()}
            expected = [{"exp_labels": labels}]
        tests.append({"name": name, "interval": "30s", "input_series": series,
                      "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}]})
    assert tested == set(severity), "every alert needs a rule test"
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["alerts.yml"], "evaluation_interval": "30s", "tests": tests}, sort_keys=False))
    r = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- metric names in PromQL


def test_promql_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(streamer_event_latency_seconds_bucket[5m]))) '
            '/ on(instance) streamer_active_streams{reason="streamer_not_a_metric", job=~"streamer_x"} '
            'unless up{job="streamer"} and absent(streamer_model_info)')
    assert ds.promql_metric_names(expr) == {"streamer_event_latency_seconds_bucket", "streamer_active_streams",
                                            "streamer_model_info"}


def test_family_of_maps_stored_names_by_type():
    kinds = {"streamer_events": "counter", "streamer_event_latency_seconds": "histogram",
             "streamer_active_streams": "gauge", "streamer_model": "info"}
    assert ds.family_of("streamer_events_total", kinds) == "streamer_events"
    assert ds.family_of("streamer_event_latency_seconds_bucket", kinds) == "streamer_event_latency_seconds"
    assert ds.family_of("streamer_event_latency_seconds_count", kinds) == "streamer_event_latency_seconds"
    assert ds.family_of("streamer_active_streams", kinds) == "streamer_active_streams"
    assert ds.family_of("streamer_model_info", kinds) == "streamer_model"
    # wrong suffix for the type, or a renamed family: not explained
    assert ds.family_of("streamer_events", kinds) is None
    assert ds.family_of("streamer_active_streams_total", kinds) is None
    assert ds.family_of("streamer_event_latency_seconds", kinds) is None
    assert ds.family_of("streamer_events_processed_total", kinds) is None


def test_every_dashboard_and_alert_query_names_streamer_metrics():
    for title, expr in ds.dashboard_exprs() + ds.alert_exprs():
        names = ds.promql_metric_names(expr)
        assert names or "up{" in expr, f"{title}: {expr}"


# --------------------------------------------------------------------------- Grafana


def test_dashboard_panels_and_datasource():
    dash = json.loads(ds.DASHBOARD.read_text())
    datasource = yaml.safe_load((ds.GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert dash["uid"] == "rnn-streamer"
    titles = set()
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert panel.get("description"), panel["title"]
    assert {"Throughput", "Step latency p50 / p99", "Consumer lag per partition", "Active streams",
            "Dead letters by reason", "Batch size", "Checkpoints", "Restores", "Model version"} <= titles
    exprs = " ".join(e for _, e in ds.dashboard_exprs())
    for needle in ("histogram_quantile(0.5, sum by (le) (rate(streamer_event_latency_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(streamer_event_latency_seconds_bucket",
                   "max by (partition) (streamer_kafka_consumer_lag_records)",
                   "sum by (reason) (rate(streamer_dead_letters_total"):
        assert needle in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:  # panels fit the 24-column grid
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
