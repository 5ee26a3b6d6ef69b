"""The ``cdr`` command: migrate, create-topics, ingest, api, notify, run, import, simulate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from cdr.logs import configure_logging
from cdr.settings import GROUPS, Settings, SettingsError, load_settings
from cdr.startup import StartupFailed, masked_url
from cdr.store import StoreError, open_store
from cdr.store.migrations import migrate

log = logging.getLogger("cdr")


async def _migrate(settings: Settings) -> int:
    store = open_store(settings.clickhouse)
    try:
        applied = await migrate(store, feed_retention_days=settings.api.feed_retention_days)
    finally:
        await store.close()
    names = [f"{m.version:04d}_{m.name}" for m in applied]
    log.info("schema is current", extra={"applied": names})
    return 0


async def _check_config(settings: Settings, command: str) -> int:
    """``--check-config``: what ``command`` checks before it connects to anything (the
    settings, the embedded engine when no server is set, the cursor secret, the token, tenant
    and key files), by building what it builds, then exit 0 without connecting: an image's
    smoke test, and an operator's check of a configuration before a rollout."""
    from cdr.metrics import Metrics

    store = open_store(settings.clickhouse)  # no connection yet: clients are made by the first query
    try:
        if command in ("api", "run"):
            from cdr.api.app import create_app

            create_app(settings.api, settings.common, store, Metrics())
        if command in ("ingest", "run"):
            from cdr.ingest.app import build_ingestor

            build_ingestor(settings.kafka, settings.ingest, settings.common, store, Metrics())
        if command in ("notify", "run"):
            from cdr.notify.notifier import Notifier
            from cdr.store.feed_hub import feed_hub_for

            metrics = Metrics()
            Notifier(settings.notify, settings.common, store, metrics, hub=feed_hub_for(settings.api, store, metrics))
    finally:
        await store.close()
    log.info(
        "configuration valid", extra={"command": command, "clickhouse": masked_url(settings.clickhouse.clickhouse_dsn)}
    )
    return 0


async def _create_topics(settings: Settings) -> int:
    from cdr.topics import create_topics

    created = await create_topics(settings.kafka)
    log.info("topics ready", extra={"topics_created": created})
    return 0


async def _import(settings: Settings, files: list[Path], rejects: Path, batch_size: int) -> int:
    from cdr.importer import import_files

    report = await import_files(settings, files, rejects, batch_size=max(batch_size, 1), tty=sys.stderr.isatty())
    outcome = {"lines": report.lines, "stored": report.stored, "rejected": report.rejected, "files": report.files}
    if report.rejected:
        log.warning("import done; some lines were refused", extra={**outcome, "rejects": str(rejects)})
    else:
        log.info("import done", extra=outcome)
    return 0


def schema_files(settings: Settings) -> dict[str, bytes]:
    """The machine-readable contracts checked in under schemas/, as they should read."""
    import orjson

    from cdr.api.openapi import OPENAPI_FILE, openapi_document
    from cdr.ingest.asyncapi import ASYNCAPI_FILE, asyncapi_document
    from cdr.model.schema import EVENT_SCHEMA_FILE, event_json_schema

    dump = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    documented = settings.replaced(**_DOC_DEFAULTS)
    return {
        EVENT_SCHEMA_FILE: orjson.dumps(event_json_schema(), option=dump) + b"\n",
        OPENAPI_FILE: orjson.dumps(openapi_document(documented.api), option=dump) + b"\n",
        ASYNCAPI_FILE: orjson.dumps(asyncapi_document(documented.kafka), option=dump) + b"\n",
    }


# The checked-in documents show the defaults, whatever this machine's environment says.
_DOC_DEFAULTS: dict[str, object] = {
    "default_limit": 10,
    "max_limit": 1_000,
    "kafka_bootstrap_servers": "kafka:9092",
    "kafka_topic": "pbx.call-ended",
    "kafka_dlq_topic": "pbx.call-ended.dlq",
    "kafka_group_id": "cdr-ingest",
}


def _schemas(settings: Settings, folder: str, check: bool) -> int:
    from pathlib import Path

    stale = []
    for name, content in schema_files(settings).items():
        path = Path(folder) / name
        if check:
            if not path.exists() or path.read_bytes() != content:
                stale.append(str(path))
        else:
            path.write_bytes(content)
            print(f"wrote {path}")
    if stale:
        print("out of date (run `cdr schemas`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def _config_failure(exc: SettingsError) -> None:
    """One structured line for the operator: each bad setting with its (masked) value."""
    log.error("invalid configuration", extra={"problems": exc.problems})


def settings_help(width: int = 100) -> str:
    """The CDR_* variables by group, in the order of the README's Settings section."""
    lines = ["settings, by group (CDR_* environment variables; README, Settings, says what each does):"]
    for group in GROUPS.values():
        names = ", ".join(group.env(field) for field in group.model_fields)
        lines.append(textwrap.fill(names, width, initial_indent=f"  {group.title}: ", subsequent_indent="    "))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    clickhouse = (
        "ClickHouse: CDR_CLICKHOUSE_URL=http(s)://[user@]host[:port] for a server or cluster, or"
        " chdb:///absolute/folder for the embedded engine in this process (one process per folder:"
        " use `cdr run`); unset, the embedded engine in CDR_DATA_DIR (default ./data). The same"
        " client code (clickhouse-connect) runs either way."
    )
    parser = argparse.ArgumentParser(
        prog="cdr",
        description="CDR service. Configuration comes from CDR_* environment variables (see README).",
        epilog=textwrap.fill(clickhouse, 100) + "\n\n" + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the settings' lines
    )
    sub = parser.add_subparsers(dest="command", required=True)
    checked = [
        sub.add_parser("migrate", help="apply pending ClickHouse schema migrations"),
        sub.add_parser("ingest", help="consume call-ended events into ClickHouse"),
        sub.add_parser("api", help="serve the CDR query API"),
        sub.add_parser("notify", help="deliver each tenant's changes to its webhook endpoints (README, Webhooks)"),
        sub.add_parser(
            "run", help="migrate, ingest, serve the API and deliver webhooks in one process (an embedded store)"
        ),
    ]
    for command in checked:
        command.add_argument(
            "--check-config",
            action="store_true",
            help="check the configuration as the command would at start-up, then exit (0: valid) without connecting",
        )
    sub.add_parser("create-topics", help="create the call-ended and dead-letter topics if missing")
    sch = sub.add_parser("schemas", help="write the event JSON Schema and the OpenAPI document")
    sch.add_argument("--dir", default="schemas", help="folder to write to (default: schemas)")
    sch.add_argument("--check", action="store_true", help="only check the files are current")
    imp = sub.add_parser(
        "import",
        help="load historical calls (NDJSON events or CSV with the event's field names; gzip accepted)",
    )
    imp.add_argument("files", nargs="+", type=Path, help="files to import, in order")
    imp.add_argument(
        "--rejects",
        type=Path,
        default=Path("import-rejects.ndjson"),
        help="where refused lines go, with their reasons (default: import-rejects.ndjson)",
    )
    imp.add_argument("--batch-size", type=int, default=20_000, help="events per insert (default 20000)")
    sim = sub.add_parser("simulate", help="publish realistic call-ended events")
    sim.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    sim.add_argument("--count", type=int, default=0, help="stop after this many events (0: run until Ctrl-C)")
    sim.add_argument(
        "--tenants", default="demo.tel4vn.com,acme.pbx.vn,hanoi.callcenter.vn", help="comma-separated tenant ids"
    )
    sim.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("INFO")
    try:
        settings = load_settings()
    except SettingsError as exc:
        _config_failure(exc)
        return 2
    configure_logging(settings.common.log_level)
    commands = {
        "migrate": lambda: _migrate(settings),
        "create-topics": lambda: _create_topics(settings),
    }
    if args.command == "schemas":
        return _schemas(settings, args.dir, args.check)
    try:
        if getattr(args, "check_config", False):
            return asyncio.run(_check_config(settings, args.command))
        if args.command in ("api", "run", "ingest"):
            from cdr import runner

            run = {"api": runner.run_api, "run": runner.run_all, "ingest": runner.run_ingest}[args.command]
            return asyncio.run(run(settings))
        if args.command == "notify":
            from cdr.notify.service import run_notify

            return asyncio.run(run_notify(settings))
        if args.command == "import":
            return asyncio.run(_import(settings, args.files, args.rejects, args.batch_size))
        if args.command == "simulate":
            from cdr.simulate import simulate

            return asyncio.run(
                simulate(
                    settings.kafka,
                    settings.common,
                    rate=args.rate,
                    count=args.count,
                    tenants=[t.strip() for t in args.tenants.split(",") if t.strip()],
                    seed=args.seed,
                )
            )
        return asyncio.run(commands[args.command]())
    except SettingsError as exc:
        _config_failure(exc)
        return 2
    except StartupFailed as exc:
        log.error("cannot start: %s", exc, extra={"setting": exc.setting, "value": exc.value})
        return 1
    except StoreError as exc:
        log.error("ClickHouse: %s", exc, extra={"setting": "CDR_CLICKHOUSE_URL", "code": exc.code})
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
