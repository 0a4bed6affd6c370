from __future__ import annotations

import pytest

from linguamesh.node.config import NodeConfig
from linguamesh.observability.logging import parse_levels
from linguamesh.scheduler.config import SchedulerConfig


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINGUAMESH_PENDING_TIMEOUT", "2.5")
    monkeypatch.setenv("LINGUAMESH_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("LINGUAMESH_NODE_TOKEN", "t0k")
    cfg = SchedulerConfig.from_env(max_attempts=2, ack_timeout=None)
    assert cfg.pending_timeout == 2.5 and cfg.max_attempts == 2 and cfg.ack_timeout == 5.0
    assert cfg.node_token == "t0k"
    assert cfg.lifecycle().pending_timeout == 2.5


def test_bad_env_and_values_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINGUAMESH_ACK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="LINGUAMESH_ACK_TIMEOUT='soon' is not a valid float"):
        SchedulerConfig.from_env()
    monkeypatch.delenv("LINGUAMESH_ACK_TIMEOUT")
    with pytest.raises(ValueError, match="max_attempts"):
        SchedulerConfig.from_env(max_attempts=0)


def test_node_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "n.toml"
    f.write_text('node_id = "x"\nmax_concurrent_jobs = 3\n[[engines]]\nkind = "test"\n')
    cfg = NodeConfig.load(f)
    assert cfg.node_id == "x" and cfg.max_concurrent_jobs == 3 and cfg.engines == [{"kind": "test"}]
    f.write_text("nodeid = 1\n")
    with pytest.raises(ValueError, match="unknown node config keys: nodeid"):
        NodeConfig.load(f)
    with pytest.raises(ValueError, match="does not exist"):
        NodeConfig.load(tmp_path / "missing.toml")


def test_log_level_spec() -> None:
    import logging

    assert parse_levels("warning,linguamesh.scheduler=debug") == (
        logging.WARNING,
        {"linguamesh.scheduler": logging.DEBUG},
    )
    with pytest.raises(ValueError, match="unknown log level"):
        parse_levels("loud")


def test_the_default_instance_id_is_unique_and_durations_read_like_people_write_them() -> None:
    from linguamesh.scheduler.config import SchedulerConfig, parse_duration

    on_redis = "redis://127.0.0.1:1/0"
    assert SchedulerConfig(redis_url=on_redis).instance_id != SchedulerConfig(redis_url=on_redis).instance_id
    assert SchedulerConfig().instance_id == "local"  # alone, a restart keeps its name
    assert [parse_duration(x) for x in ("90", "90s", "15m", "24h", "7d", "1.5h")] == [
        90, 90, 900, 86400, 7 * 86400, 5400,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("a day")
    with pytest.raises(ValueError, match="instance_id"):
        SchedulerConfig(instance_id="two words").validate()
