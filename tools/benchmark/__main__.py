"""``tools/bench`` (``python -m benchmark`` with tools/ on the path)."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from . import report
from .loadgen import BuildError, Loadgen, build
from .procs import stop_all
from .suite import SCENARIOS, Bench, Settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tools/bench",
        description="Benchmark the coapdev gateway side by side with libcoap's "
        "coap-server-openssl, aiocoap's stock DTLS server and a Python UDP echo, all on "
        "loopback, driven by a C load generator (tools/loadgen.c, compiled on the fly).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small counts, under a minute (for CI); exits non-zero only on errors",
    )
    p.add_argument("--runs", type=int, help="repetitions of each measurement (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per GET run (default 8; quick 1)")
    p.add_argument(
        "--sustained-minutes",
        type=float,
        help="length of the sustained-load run (default 5; quick: 4 seconds)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write every number to FILE")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots into DIR")
    p.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, state directories)"
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME[,NAME]",
        help="run only these scenarios: " + ", ".join(SCENARIOS) + " (default: all; "
        "--quick leaves out storm and scaling unless named)",
    )
    return p.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = frozenset(n.strip() for item in args.only or [] for n in item.split(",") if n.strip())
    unknown = sorted(only - set(SCENARIOS))
    if unknown:
        print(f"tools/bench: unknown scenario {', '.join(unknown)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    settings = Settings.make(
        quick=args.quick,
        runs=args.runs,
        duration_s=args.duration,
        sustained_s=None if args.sustained_minutes is None else args.sustained_minutes * 60,
    )
    workdir = Path(tempfile.mkdtemp(prefix="coapdev-bench-"))
    try:
        try:
            binary = build(workdir)
        except BuildError as exc:
            print(f"tools/bench: {exc}", file=sys.stderr)
            return 2
        bench = Bench(settings, workdir, Loadgen(binary), only)
        try:
            bench.run_all()
        except KeyboardInterrupt:
            print("\ntools/bench: interrupted; stopping every server", file=sys.stderr)
            stop_all()
            return 130
        results = bench.results
        print(report.report(results), flush=True)
        if args.json:
            report.write_json(results, args.json)
            print(f"numbers written to {args.json}")
        if args.plot:
            for path in report.plot(results, args.plot):
                print(f"plot written to {path}")
        if args.keep:
            print(f"work directory kept: {workdir}")
        return 1 if bench.errors else 0
    finally:
        stop_all()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
