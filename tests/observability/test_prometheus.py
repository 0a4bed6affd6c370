"""The shipped dashboard and alert rules against a real Prometheus scraping a real scheduler
(with Redis) and node; the rules checked and unit-tested with promtool."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import httpx
import yaml

from linguamesh.client import SessionClient

from ..conftest import SCALE, free_port, pcm
from ..procs import launch, start_scheduler_process, wait_node
from ..prometheus_server import ROOT, PrometheusServer, tool

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "linguamesh.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
#: an alert's condition: the query is what must return data
_THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.e+-]+\s*$")


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"].replace("$__rate_interval", "1m")))
    return out


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            query = _THRESHOLD.sub("", expr)
            assert query != expr, f"{rule['alert']}: no threshold to strip"
            out.append((rule["alert"], query))
    return out


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = tool("promtool")
    folder = DEPLOY / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"],
                 ["check", "config", "prometheus.yml"]):  # fmt: skip
        out = subprocess.run([promtool, *args], cwd=folder, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    assert (
        "SUCCESS: 7 rules found"
        in subprocess.run(
            [promtool, "check", "rules", "alerts.yml"], cwd=folder, capture_output=True, text=True
        ).stdout
    )


def test_the_dashboard_is_a_grafana_dashboard_of_the_wanted_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "linguamesh"
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for wanted in ("jobs finished per second", "per stage", "end to end", "queue wait", "by code",
                   "connected nodes", "free slots", "per language pair"):  # fmt: skip
        assert wanted in titles, wanted
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


async def test_every_dashboard_and_alert_query_returns_data_from_a_real_prometheus(
    tmp_path: Path, redis_url: str
) -> None:
    node_port = free_port()
    port, sched = await start_scheduler_process(
        "--redis-url", redis_url, "--pending-timeout", "0.5", log=tmp_path / "scheduler.log"
    )
    url = f"ws://127.0.0.1:{port}"
    cfg = tmp_path / "node.toml"
    # eSpeak NG first (a real engine: its inferences are timed per model), the test engines
    # for the rest
    cfg.write_text(
        f'node_id = "node-m"\nmax_concurrent_jobs = 2\nmetrics_port = {node_port}\ndrain_timeout = 1.0\n'
        '[[engines]]\nkind = "espeak-ng"\nlanguages = ["es"]\n'
        '[[engines]]\nkind = "test"\nlanguages = ["en", "es"]\ndelay_ms = 20\n'
    )
    node = launch("node", "--scheduler", url, "--config", str(cfg), log=tmp_path / "node.log")
    prom = PrometheusServer(
        tmp_path / "prometheus",
        {"linguamesh-scheduler": [f"127.0.0.1:{port}"], "linguamesh-node": [f"127.0.0.1:{node_port}"]},
    ).start()
    try:
        await wait_node(url.replace("ws", "http"), "node-m")
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(int(200 * SCALE)):  # both scraped once before the load
                health = await prom.targets_up(http)
                if len(health) == 2 and set(health.values()) == {"up"}:
                    break
                await asyncio.sleep(0.1)
            assert set(health.values()) == {"up"}, health
            # a short load: results with partials and speech, and one pair nobody serves
            async with SessionClient(url, src="en", tgt="es") as c:
                for i in range(6):
                    await c.send_utterance(i, pcm(0.3))
                results = await c.results(6, timeout=20 * SCALE)
            async with SessionClient(url, src="en", tgt="de") as c:
                await c.send_utterance(0, pcm(0.3))
                unserved = await c.next_result(10 * SCALE)
            assert [r.status for r in results] == ["ok"] * 6 and unserved.status == "failed"
            for _ in range(int(100 * SCALE)):  # until a scrape after the load is in
                done = await prom.query(http, "sum(linguamesh_jobs_finished_total)")
                if done and float(done[0]["value"][1]) >= 7:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.5)  # two more scrapes: rates over the load have two samples
            empty = []
            for name, query in dashboard_queries() + alert_queries():
                if not await prom.query(http, query):
                    empty.append(f"{name}: {query}")
            assert not empty, "queries without data:\n" + "\n".join(empty)
            # and the figures are the load's
            pair = await prom.query(http, "sum by (pair) (linguamesh_end_to_end_latency_seconds_count)")
            assert {r["metric"]["pair"]: float(r["value"][1]) for r in pair} == {"en-es": 6.0, "en-de": 1.0}
            failed = await prom.query(http, 'sum by (code) (linguamesh_jobs_finished_total{state="failed"})')
            assert {r["metric"]["code"]: float(r["value"][1]) for r in failed}["no_available_node"] == 1
            nodes = await prom.query(http, "max by (pair) (linguamesh_pair_nodes)")
            assert {r["metric"]["pair"]: float(r["value"][1]) for r in nodes}["en-es"] == 1
            tts = await prom.query(http, "sum by (model) (linguamesh_model_inference_seconds_count)")
            assert tts and sum(float(r["value"][1]) for r in tts) >= 6, tts
    finally:
        prom.stop()
        node.stop()
        sched.stop()
