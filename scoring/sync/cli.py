"""``ctr-sync``: keep a local model repository in step with a remote model package.

    ctr-sync --source httpfs://h1:14000,h2:14000/models/ctr --repo /srv/models --model ctr \\
             --interval 60 --rate-limit 20M --keep 3 [--once] [--alarm-webhook URL] [--metrics-port 9108]

``--once`` runs one cycle and exits 0 when the live version is current (installed now or
unchanged), 1 with the reason when the cycle failed; 2 means a bad flag.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ..lifecycle.priority import lower_thread_priority
from . import metrics
from .sources import SourceURLError
from .syncer import DEFAULT_RATE, SyncConfig, Syncer
from .throttle import format_rate, parse_bytes, parse_rate

log = logging.getLogger("scoring.sync")


def _positive(kind):
    def conv(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return conv


def _rate(text: str) -> float | None:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        value = int(parse_bytes(text, "size"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="ctr-sync", description="Keep a local model repository in step with a remote model package "
        "(WebHDFS, HttpFS, HTTP or a local path): verified, throttled, installed atomically.")
    p.add_argument("--source", default=env("CTR_SYNC_SOURCE"), required=not env("CTR_SYNC_SOURCE"),
                   help="remote package directory: webhdfs://nn1:9870,nn2:9870/path, httpfs://h1:14000,"
                   "h2:14000/path, http(s)://host/path or file:///path (env CTR_SYNC_SOURCE)")
    p.add_argument("--repo", default=env("CTR_MODEL_REPO", "./model_repo"),
                   help="local model repository (env CTR_MODEL_REPO, default ./model_repo)")
    p.add_argument("--model", default=env("CTR_SYNC_MODEL"), required=not env("CTR_SYNC_MODEL"),
                   help="model name: versions go to <repo>/<model>/<version>/ (env CTR_SYNC_MODEL)")
    p.add_argument("--interval", type=_positive(float), default=60.0,
                   help="seconds between polls, +/- --jitter (default 60)")
    p.add_argument("--jitter", type=float, default=0.1,
                   help="fraction of the interval to vary each poll by (default 0.1)")
    p.add_argument("--rate-limit", type=_rate, default=parse_rate(DEFAULT_RATE),
                   help=f"download bytes per second over the whole sync, K/M/G = 1024^n (default "
                   f"{DEFAULT_RATE}; 0 = no limit)")
    p.add_argument("--keep", type=_positive(int), default=3,
                   help="versions kept in the repo, the live one always among them (default 3)")
    p.add_argument("--once", action="store_true", help="run one cycle and exit (0 = live version current)")
    p.add_argument("--wait-live", type=float, default=0.0, metavar="SECONDS",
                   help="with --once: then wait up to SECONDS for the service to make the remote "
                   "version live; exit 1 if it rejects it or the time runs out (default 0: no wait)")
    p.add_argument("--alarm-webhook", metavar="URL", help="POST a JSON alarm here when a cycle fails")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    p.add_argument("--user", default=env("HADOOP_USER_NAME"),
                   help="HDFS user.name for WebHDFS/HttpFS (default $HADOOP_USER_NAME)")
    p.add_argument("--timeout", type=_positive(float), default=30.0,
                   help="seconds a request may wait for the server before failing over (default 30)")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed attempt per cycle (default 3)")
    p.add_argument("--cycle-timeout", type=_positive(float), default=1800.0,
                   help="a cycle taking longer fails (default 1800 s)")
    p.add_argument("--max-file-size", type=_size, default=16 << 30,
                   help="refuse package files larger than this (default 16G; a manifest: 1M)")
    p.add_argument("--max-package-size", type=_size, default=64 << 30,
                   help="refuse a package whose files add up to more than this (default 64G)")
    p.add_argument("--low-priority", action="store_true",
                   help="run at idle CPU priority (Linux SCHED_IDLE), so a sidecar never delays requests")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.path.exists(args.repo) and not os.path.isdir(args.repo):
        parser.error(f"--repo {args.repo!r}: exists and is not a directory")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        parser.error(f"--metrics-port: expected 1-65535, got {args.metrics_port}")
    try:
        config = SyncConfig(source=args.source, repo=args.repo, model=args.model, interval=args.interval,
                            jitter=args.jitter, rate_limit=args.rate_limit, keep=args.keep,
                            retries=args.retries, timeout=args.timeout, cycle_timeout=args.cycle_timeout,
                            max_file_bytes=args.max_file_size,
                            max_package_bytes=args.max_package_size, user=args.user,
                            alarm_webhook=args.alarm_webhook)
        syncer = Syncer(config)
    except (SourceURLError, ValueError) as exc:
        parser.error(str(exc))
    if args.metrics_port:
        try:
            metrics.serve(args.metrics_port, args.metrics_host)
        except OSError as exc:
            parser.error(f"--metrics-port {args.metrics_port}: cannot listen ({exc})")

    if args.low_priority:
        log.info("CPU priority: %s", lower_thread_priority(idle=True, niceness=19))
    if args.once:
        result = syncer.cycle(wait_for_lock=True)
        line = (f"ctr-sync: model {config.model!r}: {result.message} "
                f"({result.bytes} bytes, {result.seconds:.2f}s)")
        live, why = True, ""
        if result.ok and args.wait_live > 0 and result.version:
            live, why = syncer.wait_live(result.version, args.wait_live)
        syncer.close()
        if result.ok and args.wait_live > 0 and result.version:
            if not live:
                print(f"{line}\nctr-sync: model {config.model!r}: {why}", file=sys.stderr)
                return 1
            line += f"; {why}"
        if result.ok:
            print(line)
            return 0
        print(f"ctr-sync: model {config.model!r}: sync from {syncer.source.describe()} failed after "
              f"{result.attempts} attempt(s): {result.message}", file=sys.stderr)
        return 1

    def _stop(signum, frame):  # noqa: ARG001
        log.info("signal %d: stopping after the current step", signum)
        syncer.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    log.info("rate limit %s, keeping %d versions", format_rate(config.rate_limit), config.keep)
    syncer.run_forever()
    syncer.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
