"""The Kubernetes manifests in ``deploy/kubernetes`` validate against the Kubernetes
schemas (``kubernetes-validate``, strict: no unknown field), and say what the processes
need: a drain's grace period, the readiness and liveness routes, GPUs for GPU nodes, a
node config the node accepts."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from linguamesh.engines.registry import known_kinds
from linguamesh.node.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
DOCS = [(f.name, d) for f in FILES for d in yaml.safe_load_all(f.read_text()) if d]


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[f"{n}:{d['kind']}" for n, d in DOCS])
def test_each_resource_is_valid_for_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _pods() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for _, d in DOCS if d["kind"] == "Deployment"
    }


def test_pods_get_a_drains_time_and_probes_on_the_processes_routes() -> None:
    pods = _pods()
    assert {"linguamesh-scheduler", "linguamesh-node-gpu", "linguamesh-node-cpu"} <= set(pods)
    for name, pod in pods.items():
        assert pod["terminationGracePeriodSeconds"] >= 30 + 10, name  # the drain timeout and a margin
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        (c,) = pod["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
    gpu = pods["linguamesh-node-gpu"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in pods["linguamesh-node-cpu"]["containers"][0]["resources"].get("limits", {})


def test_the_gpu_nodes_config_is_one_the_node_accepts(tmp_path: Path) -> None:
    (cm,) = [d for _, d in DOCS if d["kind"] == "ConfigMap" and "node.toml" in d.get("data", {})]
    text = cm["data"]["node.toml"]
    (tmp_path / "node.toml").write_text(text)
    cfg = NodeConfig.load(tmp_path / "node.toml")
    assert cfg.metrics_host == "0.0.0.0" and cfg.metrics_port == 9310  # the probes' port
    assert {e["kind"] for e in tomllib.loads(text)["engines"]} <= set(known_kinds())
