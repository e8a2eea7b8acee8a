"""Building tools/loadgen.c and running it against a server, sampling the server meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import Proc, system_busy_s

SOURCE = Path(__file__).resolve().parents[1] / "loadgen.c"
OPENSSL_HEADER = Path("/usr/include/openssl/ssl.h")


class BuildError(Exception):
    pass


class LoadgenError(Exception):
    pass


def build(out_dir: Path) -> Path:
    """Compile the load generator into ``out_dir``; a clear error if the tools are missing."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BuildError(
            "no C compiler: the benchmark compiles its load generator (tools/loadgen.c) "
            "with gcc and OpenSSL 3.  Install them: sudo apt-get install -y gcc libssl-dev "
            "(or run tools/setup --test)"
        )
    binary = out_dir / "loadgen"
    argv = [gcc, "-O2", "-pthread", "-o", str(binary), str(SOURCE), "-lssl", "-lcrypto"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        missing_headers = "openssl/" in proc.stderr and "No such file" in proc.stderr
        if missing_headers or not OPENSSL_HEADER.exists():
            raise BuildError(
                "OpenSSL development headers are missing (openssl/ssl.h): "
                "sudo apt-get install -y libssl-dev (or run tools/setup --test)"
            )
        raise BuildError(f"compiling {SOURCE} failed:\n{proc.stderr.strip()}")
    return binary


@dataclass
class Run:
    """One load generator run: its JSON plus what the server did meanwhile."""

    result: dict[str, Any]
    server_cpu_s: float | None = None
    #: (seconds since the measured phase began, RSS KiB, server CPU s, machine busy CPU s).
    series: list[tuple[float, int, float, float]] = field(default_factory=list)
    rss_at_ready_kib: int = 0
    rss_at_done_kib: int = 0
    #: Wall-clock time the run began.
    started_at: float = 0.0
    #: CPU seconds the whole machine was busy during the measured phase.
    system_busy_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = dict(self.result)
        count = self.result.get("count", 0)
        elapsed = self.result.get("elapsed_s", 0)
        out["server_cpu_s"] = self.server_cpu_s
        out["server_cpu_us_per_op"] = (
            self.server_cpu_s * 1e6 / count if self.server_cpu_s is not None and count else None
        )
        out["server_cpu_share"] = (
            self.server_cpu_s / elapsed if self.server_cpu_s is not None and elapsed else None
        )
        if self.system_busy_s is not None and elapsed:
            # what neither the server nor the generator used: other work on the machine
            ours = (self.server_cpu_s or 0) + self.result.get("cpu_s", 0)
            out["other_cpu_share"] = max(0.0, self.system_busy_s - ours) / elapsed
        out["rss_at_ready_kib"] = self.rss_at_ready_kib
        out["rss_at_done_kib"] = self.rss_at_done_kib
        if self.series:
            out["series"] = [
                [round(t, 3), rss, round(cpu, 3), round(busy, 3)]
                for t, rss, cpu, busy in self.series
            ]
        return out


class Loadgen:
    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def argv(self, mode: str, **options: Any) -> list[str]:
        argv = [str(self.binary), mode]
        for key, value in options.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            argv.append(flag)
            if value is not True:
                argv.append(str(value))
        return argv

    def start(self, mode: str, **options: Any) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(mode, **options),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(
        self,
        mode: str,
        *,
        server: Proc | None = None,
        sample_every_s: float | None = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> Run:
        """Run to completion; the server's CPU is read at the phase lines it prints."""
        duration = float(options.get("duration", 5))
        setup = float(options.get("setup_timeout", 60))
        limit = timeout_s or duration + setup + 40
        started_at = time.time()
        proc = self.start(mode, **options)
        marks: dict[str, tuple[float, float, int]] = {}
        busy: dict[str, float] = {}
        other: list[str] = []

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("loadgen: ready") or line.startswith("loadgen: done"):
                    key = "ready" if "ready" in line else "done"
                    busy[key] = system_busy_s()
                    if server is not None and server.alive():
                        marks[key] = (time.monotonic(), server.cpu_s(), server.rss_kib())
                    else:
                        marks[key] = (time.monotonic(), 0.0, 0)
                else:
                    other.append(line.rstrip())

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        series: list[tuple[float, int, float, float]] = []
        deadline = time.monotonic() + limit
        next_sample = 0.0
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now > deadline:
                    raise LoadgenError(f"loadgen {mode} did not finish in {limit:.0f} s")
                if (
                    sample_every_s
                    and server is not None
                    and "ready" in marks
                    and "done" not in marks
                    and now >= next_sample
                ):
                    next_sample = now + sample_every_s
                    sample = (now - marks["ready"][0], server.rss_kib(), server.cpu_s())
                    series.append((*sample, system_busy_s()))
                time.sleep(0.01 if sample_every_s else 0.02)
            assert proc.stdout is not None
            out = proc.stdout.read()
        finally:
            _end(proc, reader)
        result = _result(proc, mode, out, other)
        run = Run(result=result, series=series, started_at=started_at)
        if server is not None and "ready" in marks and "done" in marks:
            run.server_cpu_s = marks["done"][1] - marks["ready"][1]
            run.rss_at_ready_kib = marks["ready"][2]
            run.rss_at_done_kib = marks["done"][2]
            run.system_busy_s = busy["done"] - busy["ready"]
        return run


@dataclass
class StormRun:
    """A reconnect storm: the generator's JSON plus the restarted server's peak RSS and CPU."""

    result: dict[str, Any]
    #: RSS of the server before the restart, holding every session and observation.
    rss_before_kib: int = 0
    #: Highest RSS of the restarted server from the storm's start to the generator's end.
    rss_peak_kib: int = 0
    #: CPU seconds the restarted server used over the same span.
    server_cpu_s: float | None = None
    #: Seconds from stopping the old server to the new one listening.
    restart_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(
            self.result,
            rss_before_kib=self.rss_before_kib,
            rss_peak_kib=self.rss_peak_kib,
            server_cpu_s=self.server_cpu_s,
            restart_s=self.restart_s,
        )


def storm(
    lg: Loadgen,
    *,
    server: Proc,
    restart: Callable[[], Proc],
    sample_every_s: float = 0.02,
    **options: Any,
) -> StormRun:
    """``loadgen storm``: set up, then ``restart()`` the server (it returns the new process,
    listening), SIGUSR1 the generator and sample the new server until the generator ends.
    Every wait is bounded."""
    setup = float(options.get("setup_timeout", 60))
    wait = float(options.get("storm_wait", 120))
    limit = setup + wait + float(options.get("duration", 20)) + 2 * 5 + 40
    proc = lg.start("storm", **options)
    ready = threading.Event()
    storming = threading.Event()
    other: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("loadgen: ready"):
                ready.set()
            elif line.startswith("loadgen: storm"):
                storming.set()
            elif not line.startswith("loadgen: done"):
                other.append(line.rstrip())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + limit
    run = StormRun(result={})
    try:
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LoadgenError(f"loadgen storm never got ready: {' '.join(other[-3:])}")
        run.rss_before_kib = server.rss_kib()
        t0 = time.monotonic()
        new = restart()
        run.restart_s = time.monotonic() - t0
        cpu0 = new.cpu_s()
        os.kill(proc.pid, signal.SIGUSR1)
        peak = new.rss_kib()
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise LoadgenError(f"loadgen storm did not finish in {limit:.0f} s")
            peak = max(peak, new.rss_kib())
            time.sleep(sample_every_s)
        run.rss_peak_kib = max(peak, new.rss_kib())
        run.server_cpu_s = new.cpu_s() - cpu0 if new.alive() else None
        assert proc.stdout is not None
        out = proc.stdout.read()
    finally:
        _end(proc, reader)
    run.result = _result(proc, "storm", out, other)
    return run


def _end(proc: subprocess.Popen, reader: threading.Thread) -> None:
    """Kill the generator's group if it still runs; join its stderr reader; close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    reader.join(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _result(proc: subprocess.Popen, mode: str, out: str | bytes, other: list[str]) -> Any:
    """The generator's JSON result, or LoadgenError naming how it ended."""
    if proc.returncode != 0:
        detail = "\n".join(other[-5:])
        raise LoadgenError(f"loadgen {mode} exited with status {proc.returncode}: {detail}")
    try:
        return json.loads(out)
    except ValueError:
        raise LoadgenError(f"loadgen {mode} printed no JSON: {out[:200]!r}") from None
