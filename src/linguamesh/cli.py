"""The ``linguamesh`` command."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .observability.logging import configure

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="LinguaMesh: real-time speech translation."
)
err = Console(stderr=True, soft_wrap=True)

LogOpt = Annotated[
    str,
    typer.Option("--log", envvar="LINGUAMESH_LOG", help="Levels, e.g. info,linguamesh.scheduler=debug"),
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option("--log-file", envvar="LINGUAMESH_LOG_FILE", help="JSON-lines log file (rotated)"),
]


RedactOpt = Annotated[
    bool,
    typer.Option(
        "--redact-text",
        envvar="LINGUAMESH_REDACT_TEXT",
        help="Log transcripts and translations as their length only",
    ),
]
LogFormatOpt = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="LINGUAMESH_LOG_FORMAT",
        help="Console log lines: text (readable) or json (one JSON object a line, for log pipelines)",
    ),
]
LogMaxOpt = Annotated[
    float, typer.Option("--log-max-mb", envvar="LINGUAMESH_LOG_MAX_MB", help="Rotate log files at this size")
]
LogBackupsOpt = Annotated[
    int, typer.Option("--log-backups", envvar="LINGUAMESH_LOG_BACKUPS", help="Rotated log files kept")
]


def _logging(
    spec: str,
    log_file: Path | None,
    max_mb: float,
    backups: int,
    instance_id: str | None = None,
    redact: bool = False,
    fmt: str = "text",
) -> None:
    if fmt not in ("text", "json"):
        _fail(f"--log-format {fmt!r}: use text or json")
    try:
        configure(
            spec,
            json_console=fmt == "json",
            json_file=log_file,
            max_bytes=int(max_mb * 1024 * 1024),
            backup_count=backups,
            instance_id=instance_id,
            redact=redact,
        )
    except ValueError as exc:
        _fail(str(exc))


def _run_logged(coro: Any, roles: dict[str, dict[str, Any]]) -> None:
    """Run the process, with a ``process.started`` record first and ``process.stopped`` last
    (a run that has no stop record was killed or crashed: the trace tool says so), and
    OpenTelemetry tracing when the ``OTEL_*`` environment asks for it."""
    from .observability import tracing
    from .observability.logging import process_started, process_stopped
    from .runtime import run

    for role, fields in roles.items():
        process_started(role, **fields)
        tracing.configure(role, fields.get("instance_id") or fields.get("node_id"))
    how = "error"
    try:
        run(coro)
        how = "stopped"
    except KeyboardInterrupt:
        how = "interrupted"
        raise
    finally:
        tracing.shutdown()  # what is buffered is exported
        for role, fields in roles.items():
            process_stopped(role, how=how, **fields)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _duration(raw: str | None) -> float | None:
    from .scheduler.config import parse_duration

    try:
        return None if raw is None else parse_duration(raw)
    except ValueError as exc:
        _fail(str(exc))
        raise


def _sched_config(**kw: Any) -> Any:
    from .scheduler.config import SchedulerConfig

    try:
        return SchedulerConfig.from_env(**kw)
    except (ValueError, TypeError) as exc:
        _fail(str(exc))


@app.command()
def scheduler(
    host: Annotated[
        str | None, typer.Option(help="Bind address [env LINGUAMESH_HOST, default 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [env LINGUAMESH_PORT, default 5010]")] = None,
    instance_id: Annotated[
        str | None,
        typer.Option(
            help="Instance id, unique among live instances [env LINGUAMESH_INSTANCE_ID, default: host-random]"
        ),
    ] = None,
    pending_timeout: Annotated[
        float | None, typer.Option(help="Seconds a job may wait for a node [10]")
    ] = None,
    ack_timeout: Annotated[float | None, typer.Option(help="Seconds for a node to ack a job [5]")] = None,
    result_timeout: Annotated[
        float | None, typer.Option(help="Seconds for a result, plus 2x the audio length [30]")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts per job before it fails [3]")] = None,
    session_linger: Annotated[
        float | None, typer.Option(help="Seconds a disconnected session is kept for resume [120]")
    ] = None,
    heartbeat_interval: Annotated[float | None, typer.Option(help="Node heartbeat interval [5]")] = None,
    selector: Annotated[str | None, typer.Option(help="pooled (default) or flat")] = None,
    node_token: Annotated[
        str | None, typer.Option(help="Token nodes must present (shared by all nodes)")
    ] = None,
    node_tokens: Annotated[
        str | None, typer.Option(help="File of `node_id token` lines: each node's own credential")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback bind address without node credentials")
    ] = False,
    operator_token: Annotated[
        str | None, typer.Option(help="Token for /admin and the operator API (required off loopback)")
    ] = None,
    operator_token_file: Annotated[
        str | None,
        typer.Option(help="File of operator tokens, one per line, each accepted (re-read on SIGHUP)"),
    ] = None,
    metrics_public: Annotated[
        bool, typer.Option("--metrics-public", help="Serve /metrics without the operator token off loopback")
    ] = False,
    allowed_origins: Annotated[
        str | None,
        typer.Option(help="Web origins allowed on /ws/session besides the page's own (comma-separated)"),
    ] = None,
    trusted_proxies: Annotated[
        str | None,
        typer.Option(
            help="Reverse proxies whose X-Forwarded-For / Forwarded are believed (CIDRs, comma-separated)"
        ),
    ] = None,
    handshake_timeout: Annotated[
        float | None, typer.Option(help="Seconds a new socket may take to send its first message [10]")
    ] = None,
    max_connections: Annotated[int | None, typer.Option(help="Open sockets in all [10000]")] = None,
    max_connections_per_ip: Annotated[
        int | None, typer.Option(help="Open sockets per client address [200]")
    ] = None,
    max_targets: Annotated[
        int | None, typer.Option(help="Target languages per session (each is a job per utterance) [4]")
    ] = None,
    api_keys: Annotated[
        str | None,
        typer.Option(
            help="File of `KEY_ID SECRET [name=value ...]` lines: speakers and viewers need access tokens"
        ),
    ] = None,
    webhook_url: Annotated[
        str | None,
        typer.Option(help="POST signed session_started / session_ended webhooks here (needs --api-keys)"),
    ] = None,
    allow_anonymous: Annotated[
        bool, typer.Option("--allow-anonymous", help="Bound off loopback without --api-keys: start anyway")
    ] = False,
    max_sessions_per_ip: Annotated[
        int | None, typer.Option(help="Sessions an address may hold, alive or lingering [100]")
    ] = None,
    max_viewers_per_session: Annotated[
        int | None, typer.Option(help="Viewer streams (SSE) of one session [1000]")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis for many instances, e.g. redis://127.0.0.1:6379/0")
    ] = None,
    ssl_certfile: Annotated[
        str | None, typer.Option(help="TLS certificate (PEM, with its chain): serve https:// and wss://")
    ] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM)")] = None,
    redis_sentinels: Annotated[
        str | None,
        typer.Option(help="Sentinels HOST:PORT,... naming the Redis master (follows a failover)"),
    ] = None,
    redis_service: Annotated[
        str | None, typer.Option(help="The master's name at the Sentinels [mymaster]")
    ] = None,
    redis_replicas: Annotated[
        int | None,
        typer.Option(
            help="Replicas that confirm each write before it is acted on (WAIT) [1 with Sentinels, else 0]"
        ),
    ] = None,
    redis_wait_ms: Annotated[
        int | None, typer.Option(help="Milliseconds a write waits for its replica's confirmation [100]")
    ] = None,
    drain_timeout: Annotated[
        float | None, typer.Option(help="On SIGTERM, seconds to let jobs in flight deliver [30]")
    ] = None,
    reconnect_url: Annotated[
        str | None, typer.Option(help="Where a draining scheduler sends clients and nodes (default: same)")
    ] = None,
    streaming: Annotated[
        bool | None,
        typer.Option(
            "--streaming/--no-streaming",
            help="Send streamed audio to streaming nodes as it arrives (live captions) [on]",
        ),
    ] = None,
    end_of_speech_ms: Annotated[
        int | None,
        typer.Option(help="Default trailing silence (ms) that ends an utterance, server-side [500]"),
    ] = None,
    transcript_retention: Annotated[
        str | None,
        typer.Option(
            help="How long a session's transcript is kept after it ends (e.g. 3600, 90m, 24h, 7d) [24h]"
        ),
    ] = None,
    history_bytes: Annotated[
        int | None,
        typer.Option(help="Bytes of a session's newest events kept for resume (with speech) [8388608]"),
    ] = None,
    log: LogOpt = "info",
    log_file: LogFileOpt = None,
    log_max_mb: LogMaxOpt = 20.0,
    log_backups: LogBackupsOpt = 5,
    redact_text: RedactOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Run a scheduler instance."""
    from .runtime import serve_scheduler

    cfg = _sched_config(
        host=host,
        port=port,
        instance_id=instance_id,
        pending_timeout=pending_timeout,
        ack_timeout=ack_timeout,
        result_timeout=result_timeout,
        max_attempts=max_attempts,
        session_linger=session_linger,
        heartbeat_interval=heartbeat_interval,
        selector=selector,
        node_token=node_token,
        node_tokens=node_tokens,
        insecure=insecure or None,
        operator_token=operator_token,
        operator_token_file=operator_token_file,
        metrics_public=metrics_public or None,
        allowed_origins=allowed_origins,
        trusted_proxies=trusted_proxies,
        handshake_timeout=handshake_timeout,
        max_connections=max_connections,
        max_connections_per_ip=max_connections_per_ip,
        max_targets=max_targets,
        api_keys=api_keys,
        webhook_url=webhook_url,
        allow_anonymous=allow_anonymous or None,
        max_sessions_per_ip=max_sessions_per_ip,
        max_viewers_per_session=max_viewers_per_session,
        redis_url=redis_url,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        redis_sentinels=redis_sentinels,
        redis_service=redis_service,
        redis_replicas=redis_replicas,
        redis_wait_ms=redis_wait_ms,
        drain_timeout=drain_timeout,
        reconnect_url=reconnect_url,
        streaming=streaming,
        end_of_speech_ms=end_of_speech_ms,
        transcript_retention=_duration(transcript_retention),
        history_bytes=history_bytes,
    )
    _logging(log, log_file, log_max_mb, log_backups, cfg.instance_id, redact_text, log_format)
    scheme = "https" if cfg.ssl_certfile else "http"
    if log_format == "text":  # (json: every line on the console is a JSON object)
        err.print(f"LinguaMesh scheduler on {scheme}://{cfg.host}:{cfg.port}")
    _run_logged(serve_scheduler(cfg), {"scheduler": {"port": cfg.port, "instance_id": cfg.instance_id}})


def _node_config(config: Path | None, **kw: Any) -> Any:
    from .node.config import NodeConfig

    try:
        return NodeConfig.load(config, **kw)
    except (ValueError, TypeError) as exc:
        _fail(str(exc))


@app.command()
def token(
    api_keys: Annotated[Path, typer.Option(help="The API keys file (as --api-keys of the scheduler)")],
    key: Annotated[str, typer.Option(help="KEY_ID of the key that signs")],
    identity: Annotated[str, typer.Option(help="Who the token is for (its `sub`)")],
    room: Annotated[str | None, typer.Option(help="The only room it may use")] = None,
    ttl: Annotated[float, typer.Option(help="Seconds the token is valid")] = 3600.0,
    view_only: Annotated[bool, typer.Option("--view-only", help="Grant view, not speak")] = False,
    langs: Annotated[str | None, typer.Option(help="Languages it may use (comma-separated)")] = None,
) -> None:
    """Print an access token (a JWT signed with the key's secret), on the last line."""
    from .scheduler.edge.access_tokens import ApiKeys, mint

    try:
        keys = ApiKeys.load(str(api_keys))
    except ValueError as exc:
        _fail(str(exc))
    if key not in keys.keys:
        _fail(f"no key {key!r} in {api_keys}")
    grants: dict[str, Any] = {"speak": not view_only, "view": True}
    if room is not None:
        grants["room"] = room
    if langs:
        grants["langs"] = [x.strip() for x in langs.split(",") if x.strip()]
    print(mint(keys.keys[key], identity, grants, ttl))


@app.command()
def node(
    scheduler: Annotated[
        list[str] | None,
        typer.Option(
            "--scheduler",
            envvar="LINGUAMESH_NODE_SCHEDULER",
            help="Scheduler URL (repeat for failover; in the variable: space-separated), e.g. ws://127.0.0.1:5010",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(envvar="LINGUAMESH_NODE_CONFIG", help="Node TOML config (engines, limits)")
    ] = None,
    node_id: Annotated[
        str | None, typer.Option(envvar="LINGUAMESH_NODE_ID", help="Node id (default node-HOSTNAME)")
    ] = None,
    max_concurrent_jobs: Annotated[
        int | None, typer.Option(envvar="LINGUAMESH_NODE_MAX_CONCURRENT_JOBS", help="Jobs run at once")
    ] = None,
    token: Annotated[str | None, typer.Option(envvar="LINGUAMESH_NODE_TOKEN", help="Node token")] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(
            envvar="LINGUAMESH_NODE_CA_FILE",
            help="PEM bundle of the CA that signed a wss:// scheduler's certificate",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="LINGUAMESH_NODE_METRICS_PORT",
            help="Port for the node's /healthz, /readyz and /metrics (0 = off; e.g. 9310)",
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            envvar="LINGUAMESH_NODE_METRICS_HOST",
            help="Address of that port [127.0.0.1]; 0.0.0.0 for probes and Prometheus elsewhere",
        ),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            envvar="LINGUAMESH_NODE_DRAIN_TIMEOUT", help="On SIGTERM, seconds to finish running jobs [30]"
        ),
    ] = None,
    log: LogOpt = "info",
    log_file: LogFileOpt = None,
    log_max_mb: LogMaxOpt = 20.0,
    log_backups: LogBackupsOpt = 5,
    redact_text: RedactOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Run a worker node that dials in to a scheduler."""
    from .node.agent import FatalNodeError
    from .node.defaults import default_engines
    from .runtime import serve_node

    _logging(log, log_file, log_max_mb, log_backups, redact=redact_text, fmt=log_format)
    cfg = _node_config(
        config,
        scheduler_urls=scheduler or None,
        node_id=node_id,
        max_concurrent_jobs=max_concurrent_jobs,
        token=token,
        ca_file=ca_file,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        drain_timeout=drain_timeout,
    )
    if not cfg.engines:
        cfg.engines = default_engines()
    try:
        _run_logged(serve_node(cfg), {"node": {"node_id": cfg.node_id}})
    except FatalNodeError as exc:
        _fail(str(exc))


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Port")] = 5010,
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    node_config: Annotated[Path | None, typer.Option(help="Node TOML config for the local node")] = None,
    log: LogOpt = "info",
    log_file: LogFileOpt = None,
    log_max_mb: LogMaxOpt = 20.0,
    log_backups: LogBackupsOpt = 5,
    redact_text: RedactOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Scheduler + one local node + web page, in one process, with the default offline engines."""
    from .node.defaults import default_engines
    from .runtime import serve_all

    sched = _sched_config(host=host, port=port)
    _logging(log, log_file, log_max_mb, log_backups, sched.instance_id, redact_text, log_format)
    ncfg = _node_config(node_config, scheduler_urls=[f"ws://127.0.0.1:{port}"], node_id="local-node")
    if not ncfg.engines:
        ncfg.engines = default_engines()
    if log_format == "text":
        err.print(f"LinguaMesh is up on http://{host}:{port}  (Ctrl-C to stop)")
    roles = {"scheduler": {"port": port, "instance_id": sched.instance_id}, "node": {"node_id": ncfg.node_id}}
    _run_logged(serve_all(sched, ncfg), roles)


@app.command()
def translate(
    file: Annotated[Path, typer.Argument(help="WAV file with one utterance")],
    src: Annotated[str, typer.Option("--from", help="Source language, e.g. en")],
    tgt: Annotated[str, typer.Option("--to", help="Target language, e.g. es")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the translated speech here (WAV)")] = None,
    url: Annotated[str, typer.Option(envvar="LINGUAMESH_URL", help="Scheduler URL")] = "ws://127.0.0.1:5010",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result")] = 120.0,
) -> None:
    """Translate one WAV file through a running scheduler."""
    from .client.oneshot import TranslateError, translate_file

    try:
        result = asyncio.run(translate_file(url, file, src, tgt, want_tts=out is not None, timeout=timeout))
    except TranslateError as exc:
        _fail(str(exc))
        return
    typer.echo(f"transcript ({src}): {result.text_asr}")
    typer.echo(f"translation ({tgt}): {result.text_translated}")
    t = result.timings
    err.print(
        f"node {result.node_id}: asr {t.asr_ms:.0f} ms, repair {t.repair_ms:.0f} ms, "
        f"mt {t.nmt_ms:.0f} ms, tts {t.tts_ms:.0f} ms, total {t.total_ms:.0f} ms"
    )
    err.print(
        f"trace {result.trace_id} job {result.job_id} "
        f"(linguamesh trace --job {result.job_id} LOGS shows its steps)",
        highlight=False,
    )
    if out is not None:
        if not result.tts_audio:
            _fail("the node returned no speech for this language")
        out.write_bytes(result.tts_audio or b"")
        err.print(f"speech written to {out}")


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="Directory the schemas are written to")] = Path("docs/schema"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when the files differ from the code")
    ] = False,
) -> None:
    """The wire protocol's JSON Schemas (one per direction of each socket) and AsyncAPI document."""
    from .protocol.schema import documents, write

    if check:
        stale = [
            n for n, text in documents().items() if not (out / n).exists() or (out / n).read_text() != text
        ]
        if stale:
            _fail(f"{', '.join(stale)} in {out} differ from the code: run `linguamesh schema --out {out}`")
        return
    for path in write(out):
        print(path)


@app.command()
def models(
    command: Annotated[str, typer.Argument(help="list | check | preload")] = "list",
    config: Annotated[Path | None, typer.Option(help="Node TOML config (default: the offline set)")] = None,
) -> None:
    """Show which engines and models a node can serve and why not (check loads every model)."""
    from .node.defaults import default_engines
    from .node.models_cli import run as run_models

    if command not in ("list", "check", "preload"):
        _fail(f"unknown models command {command!r}: use list, check or preload")
    configure("warning")
    cfg = _node_config(config)
    raise typer.Exit(run_models(command, cfg.engines or default_engines(), err))


@app.command()
def trace(
    trace_id: Annotated[str | None, typer.Argument(help="The trace_id to follow")] = None,
    logfiles: Annotated[list[Path] | None, typer.Argument(help="Scheduler and node JSON log files")] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="Every job of this session instead")
    ] = None,
    job: Annotated[str | None, typer.Option("--job", help="This one job instead")] = None,
    utterance: Annotated[
        int | None, typer.Option("--utterance", min=0, help="Only the jobs of this utterance index")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Rebuild a job's timeline from scheduler and node logs and name the missing step.

    Exit status: 0 when every job has a complete chain, 1 when something is missing.
    """
    from .observability.trace import report_files

    files = list(logfiles or [])
    if (session is not None or job is not None) and trace_id is not None:
        files.insert(0, Path(trace_id))  # with --session or --job every argument is a file
        trace_id = None
    if trace_id is None and session is None and job is None:
        _fail("give a TRACE_ID, --session SESSION_ID or --job JOB_ID")
    if not files:
        _fail("give at least one log file")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        _fail(f"no such log file: {', '.join(missing)}")
    text, ok = report_files(files, trace_id, session, job, utterance, as_json, progress=err.print)
    typer.echo(text)
    raise typer.Exit(0 if ok else 1)


@app.command()
def healthcheck(
    urls: Annotated[
        list[str] | None,
        typer.Argument(
            help="/healthz URLs to try [the scheduler's on LINGUAMESH_PORT (5010) and the node's on "
            "LINGUAMESH_NODE_METRICS_PORT (9310), on loopback]"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each")] = 3.0,
) -> None:
    """Exit 0 when one of the URLs answers 200 (a container's HEALTHCHECK: whichever role runs)."""
    from .health import probe

    found = probe(urls or None, timeout)
    if found is None:  # 1: unhealthy (a HEALTHCHECK's 2 is reserved)
        err.print("[red]error:[/red] no /healthz answered 200")
        raise typer.Exit(1)
    print(found)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
