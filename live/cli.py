"""The `livesale` command: serve, demo, token, writer, swarm, verify."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from livesale.config import Settings
from livesale.embedded_redis import EmbeddedRedis

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("livesale")


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _freeze_gc(_app: object) -> None:
    # What startup built (modules, the app, pools, engines) lives as long as the process. Frozen, the
    # collector's full passes skip it; otherwise one walks all of it (~100 ms measured) in the middle
    # of a sale spike, and every request in flight waits (bench/inventory.py p99).
    gc.collect()
    gc.freeze()


def _worker(settings: Settings, reuse_port: bool, demo: bool, seed: bool) -> None:
    from aiohttp.web_runner import GracefulExit

    from live.app import create_app
    from live.pages import enable_dev_tokens

    _install_uvloop()
    if isinstance(sys.stdout, io.TextIOWrapper):  # a spawned worker does not run main()
        sys.stdout.reconfigure(line_buffering=True)
    app = create_app(settings)
    if demo:
        enable_dev_tokens(app)  # every worker: the pages' sign-in may land on any of them
    if seed:
        from live.demo import seed_on_startup

        app.on_startup.append(seed_on_startup)
    app.on_startup.append(_freeze_gc)
    # What aiohttp's run_app does, with our site (live.app.make_site) in place of its TCPSite.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main_task = loop.create_task(_serve(app, settings, reuse_port))
    try:
        loop.run_until_complete(main_task)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main_task.done():
            main_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main_task)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(app: web.Application, settings: Settings, reuse_port: bool) -> None:

    from live.app import make_site
    from livesale.web import Runner, access_log_options

    runner = Runner(app, handle_signals=True, shutdown_timeout=5, **access_log_options(settings))
    await runner.setup()
    try:
        await make_site(runner, settings, reuse_port=reuse_port).start()
        await asyncio.Event().wait()  # until SIGTERM / SIGINT (aiohttp's handlers raise GracefulExit)
    finally:
        await runner.cleanup()


async def _prepare_sql(settings: Settings) -> None:
    """Schema (and SQLite's WAL mode) once, before several workers open the database together."""
    import commerce.schema  # noqa: F401 - registers the tables
    import live.schema  # noqa: F401
    from livesale.db import create_tables, make_engine

    engine = make_engine(settings.sql_url)
    try:
        await create_tables(engine)
    finally:
        await engine.dispose()


def serve(settings: Settings, *, demo: bool = False) -> int:
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir / "redis").start()
        settings = dataclasses.replace(settings, redis_url=embedded.url)
        log.warning("embedded redis-server on %s (data in %s)", embedded.url, embedded.data_dir)
    try:
        if settings.workers <= 1:
            _worker(settings, False, demo, demo)
            return 0
        asyncio.run(_prepare_sql(settings))
        # Several workers share the port (SO_REUSEPORT) and Redis; /metrics on any of them covers all
        # of them through prometheus-client's multiprocess mode (monitoring/README.md).
        from monitoring.workers import MetricsDir

        metrics_dir = MetricsDir()
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=_worker, args=(settings, True, demo, demo and i == 0), daemon=False)
            for i in range(settings.workers)
        ]
        for p in procs:
            p.start()

        stopping = False

        def _stop(*_: object) -> None:
            nonlocal stopping
            stopping = True
            for p in procs:
                if p.pid and p.is_alive():
                    os.kill(p.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        running = {p.sentinel: p for p in procs}
        failed = 0
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                p = running.pop(sentinel)  # type: ignore[arg-type]
                p.join()
                if p.pid is not None:
                    metrics_dir.worker_exited(p.pid)
                # Our SIGTERM stops a worker with 0, or with -SIGTERM if it came before the worker's
                # handlers were in place; any other end (a port taken, a crash) means it could not serve.
                if p.exitcode != 0 and not (stopping and p.exitcode == -signal.SIGTERM):
                    failed += 1
                    log.error("worker %s (pid %s) exited with %s", p.name, p.pid, p.exitcode)
        metrics_dir.close()
        return 1 if failed else 0
    finally:
        if embedded is not None:
            embedded.stop()


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, not {value}")
        return value

    return parse


def _user_id(text: str) -> str:
    # livesale.auth.Verifier refuses a token whose `sub` is empty or longer than 128 characters.
    if not 1 <= len(text) <= 128:
        raise argparse.ArgumentTypeError("must be 1-128 characters")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livesale", description="Live-stream selling backend")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("serve", "run the server"), ("demo", "run the server with a seeded demo stream")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=_int_in(1, 65535), default=8080)
        s.add_argument("--workers", type=_int_in(1, 1024), default=1)
        s.add_argument("--no-metrics", action="store_true", help="skip metric updates (to measure their cost)")
    t = sub.add_parser("token", help="print a signed token")
    t.add_argument("--user", required=True, type=_user_id)
    t.add_argument("--role", default="viewer", choices=["viewer", "host", "moderator", "admin"])
    t.add_argument("--ttl", type=_int_in(1, 10 * 365 * 86400), default=3600, help="seconds (default 3600)")
    sub.add_parser("writer", help="run only the order writer (Redis order events -> SQL)")
    sub.add_parser("swarm", help="asyncio viewer swarm (see load/README.md)", add_help=False)
    sub.add_parser("verify", help="check a sale for oversell and lost orders", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Redirected to a file or a pipe (`make run > demo.log`), stdout would be block-buffered and hold
    # back what the demo prints until exit; line-buffered, each line is there when it is printed.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "swarm":
        from load.swarm import main as swarm_main

        return swarm_main(argv[1:])
    if argv and argv[0] == "verify":
        from load.verify import main as verify_main

        return verify_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.cmd in ("serve", "demo"):
        settings = Settings.from_env(
            host=args.host, port=args.port, workers=args.workers, metrics=not args.no_metrics
        )
        problems = settings.auth_problems()
        for problem in problems:
            print(f"livesale {args.cmd}: {problem}", file=sys.stderr)
        if problems:
            return 2
        return serve(settings, demo=args.cmd == "demo")
    if args.cmd == "token":
        from livesale.auth import mint

        settings = Settings.from_env()
        if settings.jwt_max_lifetime_s and args.ttl > settings.jwt_max_lifetime_s:
            print(f"livesale token: --ttl {args.ttl} is over LIVESALE_JWT_MAX_LIFETIME_S "
                  f"({settings.jwt_max_lifetime_s}): the server would refuse the token", file=sys.stderr)
            return 2
        print(mint(settings.secret, args.user, args.role, args.ttl))
        return 0
    if args.cmd == "writer":
        from commerce.writer import run_standalone

        _install_uvloop()
        return asyncio.run(run_standalone(Settings.from_env()))
    return 2


if __name__ == "__main__":
    sys.exit(main())
