"""A real Prometheus server (Debian's ``prometheus``) on a free loopback port, scraping what
a test tells it to, with LinguaMesh's alert rules loaded."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import free_port
from .procs import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def tool(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(f"{name} is not installed: run scripts/setup.sh test (Debian package prometheus)")
    return binary


class PrometheusServer:
    def __init__(self, workdir: Path, targets: dict[str, list[str]], interval: str = "1s") -> None:
        self.binary = tool("prometheus")
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: [{', '.join(repr(t) for t in hosts)}]\n"
            for job, hosts in targets.items()
        )
        self.config = workdir / "prometheus.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"rule_files:\n  - {RULES}\nscrape_configs:\n{jobs}"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        with (self.workdir / "prometheus.err").open("wb") as err:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(
            f"prometheus did not start: {(self.workdir / 'prometheus.err').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def query(self, http: httpx.AsyncClient, expr: str) -> list[Any]:
        r = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = r.json()
        assert body.get("status") == "success", (expr, body)
        return list(body["data"]["result"])

    async def targets_up(self, http: httpx.AsyncClient) -> dict[str, str]:
        data = (await http.get(f"{self.url}/api/v1/targets")).json()["data"]["activeTargets"]
        return {t["scrapeUrl"]: t["health"] for t in data}
