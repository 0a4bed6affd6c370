"""Loggers after configure(): pinned to the configured logger, levels and names kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from linguamesh.observability import logging as lmlog


def test_configured_loggers_skip_the_proxy_and_keep_levels_and_names(tmp_path: Path) -> None:
    early = lmlog.get_logger("linguamesh.scheduler.early")  # made at import time, as in modules
    path = tmp_path / "all.log"
    lmlog.configure("info,linguamesh.node=warning", json_file=path, console=False)
    try:
        late = lmlog.get_logger("linguamesh.node.late")
        assert "info" in vars(early) and "info" in vars(late)  # pinned: no proxy lookup per record
        early.debug("dropped.below_level", job_id="j0")
        early.info("kept.info", job_id="j1")
        late.info("dropped.below_module_level")
        late.warning("kept.warning", job_id="j2")
        for h in logging.getLogger().handlers:
            h.flush()
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        assert [(r["event"], r["logger"], r["level"], r["job_id"]) for r in recs] == [
            ("kept.info", "linguamesh.scheduler.early", "info", "j1"),
            ("kept.warning", "linguamesh.node.late", "warning", "j2"),
        ]
    finally:
        lmlog.reset()
    assert "info" not in vars(early) and "info" not in vars(late)  # back to following the configuration
