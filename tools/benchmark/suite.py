"""The measurements, in order: references first, then coapdev; each server stopped after use."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import servers
from .loadgen import Loadgen, LoadgenError, Run, storm
from .procs import StartError, free_udp_port, system_busy_s
from .servers import HOST, Server

#: Handshakes are measured with this many handshakes in flight.
HANDSHAKE_CLIENTS = 16
#: A request unanswered this long is sent again (doubling, 4 times): CoAP's
#: ACK_TIMEOUT is 2 s; 1 s is stricter.
REQUEST_TIMEOUT_MS = 1000
#: Upper bound on requests per second, to bound every load loop by count too.
MAX_RATE = 250_000
#: Before each run (full mode) wait until the machine is this idle: busy cores ...
QUIET_BUSY_CORES = 0.3
#: ... measured over this window, waiting at most this long per run and in all.
QUIET_WINDOW_S = 0.5
QUIET_WAIT_PER_RUN_S = 60.0
QUIET_WAIT_TOTAL_S = 600.0
#: Full mode: a run this long on the big store spans at least one last-seen write.
STORE_FLUSH_RUN_S = 125.0
#: Payloads of the storm's two changes (CBOR {"on": true}, then {"on": false}).
STORM_CHANGES = ("a1626f6ef5", "a1626f6ef4")
#: The scenarios ``--only`` can pick; every one runs in the full mode, quick mode
#: leaves out the two added for issue 15 (storm, scaling) unless they are named.
SCENARIOS = (
    "ceiling",
    "echo",
    "spawn",
    "libcoap",
    "aiocoap",
    "coapdev",
    "stored",
    "handshakes",
    "help",
    "storm",
    "scaling",
)
QUICK_LEAVES_OUT = frozenset({"storm", "scaling"})


@dataclass(frozen=True)
class Settings:
    quick: bool
    runs: int
    duration_s: float
    script_duration_s: float
    handshake_duration_s: float
    concurrency: tuple[int, ...]
    reference_concurrency: tuple[int, ...]
    script_concurrency: tuple[int, ...]
    onboard_count: int
    hold_sessions: int
    hold_duration_s: float
    hold_interval_ms: int
    sustained_s: float
    sample_every_s: float
    stored_clients: int
    settle_s: float
    help_runs: int
    storm_clients: tuple[int, ...] = (100, 1000)
    #: The storm: every client must be settled (answered, registered) within this.
    storm_bound_s: float = 20.0
    #: Scaling: stored clients measured beside the main 10 and ``stored_clients``.
    scaling_stored: tuple[int, ...] = (10, 1000, 10_000, 100_000)
    #: Scaling: sessions held (RSS per live session).
    scaling_sessions: tuple[int, ...] = (1000, 5000)
    #: Scaling: the concurrency levels (GET/s and RSS per doubling).
    scaling_concurrency: tuple[int, ...] = (1, 8, 32, 256, 1000)

    @classmethod
    def make(
        cls,
        *,
        quick: bool,
        runs: int | None = None,
        duration_s: float | None = None,
        sustained_s: float | None = None,
    ) -> Settings:
        if quick:
            base = cls(
                quick=True,
                runs=1,
                duration_s=1.0,
                script_duration_s=1.0,
                handshake_duration_s=1.0,
                concurrency=(1, 8, 32, 256),
                reference_concurrency=(32,),
                script_concurrency=(1, 8),
                onboard_count=20,
                hold_sessions=1000,
                hold_duration_s=2.0,
                hold_interval_ms=700,
                sustained_s=3.0,
                sample_every_s=0.25,
                stored_clients=10_000,
                settle_s=0.5,
                help_runs=3,
                scaling_stored=(10, 1000, 10_000),
                storm_bound_s=5.0,
            )
        else:
            base = cls(
                quick=False,
                runs=3,
                duration_s=8.0,
                script_duration_s=5.0,
                handshake_duration_s=5.0,
                concurrency=(1, 8, 32, 256),
                reference_concurrency=(1, 8, 32, 256),
                script_concurrency=(1, 8),
                onboard_count=100,
                hold_sessions=1000,
                hold_duration_s=15.0,
                hold_interval_ms=3000,
                sustained_s=300.0,
                sample_every_s=1.0,
                stored_clients=10_000,
                settle_s=3.0,
                help_runs=5,
            )
        changes: dict[str, Any] = {}
        if runs is not None:
            changes["runs"] = max(1, runs)
        if duration_s is not None:
            changes["duration_s"] = duration_s
            changes["script_duration_s"] = min(base.script_duration_s, duration_s)
            changes["handshake_duration_s"] = min(base.handshake_duration_s, duration_s)
        if sustained_s is not None:
            changes["sustained_s"] = sustained_s
        return cls(**{**base.__dict__, **changes})


class Bench:
    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        loadgen: Loadgen,
        only: frozenset[str] | None = None,
    ) -> None:
        self.s = settings
        #: The scenarios to run (``--only``); by default all (quick: all but the new two).
        self.only = (
            only
            if only
            else frozenset(SCENARIOS) - (QUICK_LEAVES_OUT if settings.quick else frozenset())
        )
        self.workdir = workdir
        self.lg = loadgen
        self.started = time.monotonic()
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.quiet_budget_s = QUIET_WAIT_TOTAL_S
        self.quiet_waits: list[tuple[float, float]] = []
        self.results: dict[str, Any] = {
            "mode": "quick" if settings.quick else "full",
            "settings": settings.__dict__ | {"handshake_clients": HANDSHAKE_CLIENTS},
            "scenarios": sorted(self.only),
            "machine": machine_info(workdir),
            "servers": {},
        }

    # --- bookkeeping ---------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)

    def error(self, message: str) -> None:
        self.errors.append(message)
        print(f"ERROR: {message}", flush=True)

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def server_results(self, name: str) -> dict[str, Any]:
        return self.results["servers"].setdefault(name, {})

    def check(self, label: str, run: Run, *, clients: int | None, mode: str) -> None:
        """Errors are functional failures; timeouts (retransmissions) are timing, not errors."""
        r = run.result
        if clients is not None and mode in ("coap", "udp", "hold") and r["sessions"] < clients:
            self.error(f"{label}: only {r['sessions']} of {clients} sessions established")
        if r["errors"]:
            self.error(f"{label}: {r['errors']} error responses {r['codes']}")
        if r["failed"]:
            self.error(f"{label}: {r['failed']} requests unanswered after 4 retransmissions")
        if r["drops"]:
            self.error(f"{label}: {r['drops']} sessions dropped by the server")
        if r["handshake_failures"]:
            self.error(f"{label}: {r['handshake_failures']} handshakes failed")
        if r["count"] == 0:
            self.error(f"{label}: nothing was answered")
        if mode == "hold" and r["sessions_unserved"]:
            self.error(f"{label}: {r['sessions_unserved']} held sessions never answered")
        if r.get("cpu_share", 0) > 0.9 and mode != "udp":
            self.note(
                f"{label}: the load generator used {r['cpu_share']:.0%} of a core: "
                "it may have limited this measurement"
            )

    def serving(self, server: Server, after: str) -> bool:
        """After a run: the server still answers; a coapdev gateway that crashed or hung is
        reported (an error) and restarted on the same state directory and port, so the
        remaining measurements still happen."""
        if server.name != "coapdev" or server.credentials is None:
            return self.alive(server, after)
        if self.answers(server, after):
            return True
        server.proc.stop()
        try:
            servers.restart_gateway(server)
        except StartError as exc:
            self.error(f"restarting the coapdev gateway failed: {exc}")
            return False
        self.note(f"the coapdev gateway was restarted after {after} (see Errors)")
        return True

    def alive(self, server: Server, after: str) -> bool:
        if server.proc.alive():
            return True
        self.error(
            f"{server.proc.name} {server.proc.how_it_ended()} during {after}\n"
            f"{server.proc.log_tail()}"
        )
        return False

    def answers(self, server: Server, after: str) -> bool:
        """Alive, and a fresh session gets an answer within a few seconds."""
        if not self.alive(server, after):
            return False
        assert server.credentials is not None
        try:
            run = self.lg.run(
                "coap",
                host=HOST,
                port=server.port,
                clients=1,
                count=1,
                duration=3,
                setup_timeout=4,
                timeout_ms=500,
                retries=2,
                handshake_timeout_ms=3000,
                **server.credentials.loadgen_options(),
            )
        except LoadgenError as exc:
            self.error(f"{server.proc.name}: probe after {after} failed: {exc}")
            return False
        if run.result["count"] >= 1:
            return True
        state = "running" if server.proc.alive() else server.proc.how_it_ended()
        self.error(
            f"{server.proc.name} no longer answers after {after} (process {state}, "
            f"{server.proc.cpu_s():.1f} s CPU so far): hung?"
        )
        return False

    # --- building blocks -----------------------------------------------------------------

    def requests(
        self,
        server: Server,
        clients: int,
        *,
        path: str = "light",
        duration_s: float | None = None,
        mode: str = "coap",
        sample_every_s: float | None = None,
        query_per_client: bool = False,
    ) -> Run:
        duration = duration_s or self.s.duration_s
        options: dict[str, Any] = {
            "query_per_client": query_per_client,
            "host": HOST,
            "port": server.port,
            "clients": clients,
            "duration": duration,
            "count": int(duration * MAX_RATE),
            "path": path,
            "timeout_ms": REQUEST_TIMEOUT_MS,
            "setup_timeout": 30,
        }
        if server.credentials is not None:
            options.update(server.credentials.loadgen_options())
        self.quiet(server)
        return self.lg.run(mode, server=server.proc, sample_every_s=sample_every_s, **options)

    def request_series(
        self,
        server: Server,
        key: str,
        levels: tuple[int, ...],
        *,
        path: str = "light",
        duration_s: float | None = None,
        mode: str = "coap",
        label: str | None = None,
        query_per_client: bool = False,
    ) -> None:
        for clients in levels:
            self.request_runs(server, key, clients, path=path, mode=mode).clear()
            for i in range(self.s.runs):
                healthy = self.request_run(
                    server,
                    key,
                    clients,
                    i,
                    path=path,
                    duration_s=duration_s,
                    mode=mode,
                    label=label,
                    query_per_client=query_per_client,
                )
                if not healthy:
                    return

    def request_runs(
        self, server: Server, key: str, clients: int, *, path: str = "light", mode: str = "coap"
    ) -> list[dict]:
        """The runs kept so far of ``key`` at ``clients`` (a list the next run is added to)."""
        kind = path if path in ("script", "handler") else "get"
        return self.server_results(key).setdefault(kind, {}).setdefault(str(clients), [])

    def request_run(
        self,
        server: Server,
        key: str,
        clients: int,
        i: int,
        *,
        path: str = "light",
        duration_s: float | None = None,
        mode: str = "coap",
        label: str | None = None,
        query_per_client: bool = False,
    ) -> bool:
        """Run ``i`` (from 0) of ``clients`` against ``server``, kept under ``key``; then
        whether the server still serves (a crashed one is restarted, its run kept apart)."""
        runs = self.request_runs(server, key, clients, path=path, mode=mode)
        what = "udp echo" if mode == "udp" else f"GET /{path}"
        name = f"{label or key} {what}, {clients} clients, run {i + 1}"
        run = self.requests(
            server,
            clients,
            path=path,
            duration_s=duration_s,
            mode=mode,
            query_per_client=query_per_client,
        )
        self.check(name, run, clients=clients, mode=mode)
        r = run.result
        self.say(
            f"{name}: {r['rate']:.0f}/s, p50 {r['latency_ms']['p50']:.2f} ms, "
            f"p99 {r['latency_ms']['p99']:.2f} ms, timeouts {r['timeouts']}"
        )
        healthy = self.serving(server, name)
        if server.proc.started_at > run.started_at:
            # restarted: this run's numbers are not a healthy server's; kept apart
            self.server_results(key).setdefault("runs_with_crash", []).append(
                run.to_json() | {"label": name}
            )
        else:
            runs.append(run.to_json())
        return healthy

    def handshakes(self, server: Server, label: str, *, close_notify: bool = True) -> Run:
        assert server.credentials is not None
        duration = self.s.handshake_duration_s
        self.quiet(server)
        run = self.lg.run(
            "handshake",
            server=server.proc,
            host=HOST,
            port=server.port,
            clients=HANDSHAKE_CLIENTS,
            duration=duration,
            count=int(duration * MAX_RATE),
            no_close_notify=not close_notify,
            **server.credentials.loadgen_options(),
        )
        self.check(label, run, clients=None, mode="handshake")
        r = run.result
        self.say(
            f"{label}: {r['rate']:.0f} handshakes/s, p50 {r['latency_ms']['p50']:.2f} ms, "
            f"p99 {r['latency_ms']['p99']:.2f} ms, failures {r['handshake_failures']}"
        )
        return run

    def handshake_series(self, name: str, start: Any) -> None:
        """Both variants, ``runs`` times each: sessions ended with close_notify (as clients
        normally do), and sessions simply dropped.  ``start()`` gives the server to use: the
        same one for the references, a fresh gateway per run for coapdev (a crash in one run
        then cannot spoil the next)."""
        out = self.server_results(name)
        for variant, close_notify in (("handshake", True), ("handshake_dropped", False)):
            runs, rss_after = [], []
            how = "close_notify" if close_notify else "dropped"
            for i in range(self.s.runs):
                server = start(i, variant)
                if server is None:
                    break
                label = f"{name} handshakes ({how}), run {i + 1}"
                try:
                    run = self.handshakes(server, label, close_notify=close_notify).to_json()
                    rss_after.append(server.proc.rss_kib())
                    if name == "coapdev":
                        run["server_crashed"] = not self.answers(server, label)
                    else:
                        run["server_crashed"] = not self.alive(server, label)
                    runs.append(run)
                except LoadgenError as exc:
                    self.error(f"{label}: {exc}")
                finally:
                    if name == "coapdev":
                        server.stop()
                if name != "coapdev" and not server.proc.alive():
                    break
            out[variant] = runs
            healthy = [kib for kib, run in zip(rss_after, runs, strict=False) if kib]
            out[f"rss_after_{variant}_kib"] = max(healthy) if healthy else None

    def quiet(self, server: Server | None = None) -> None:
        """Before a measured run: wait (boundedly) until other processes leave the CPUs
        alone.  The server under test is not "other": its own CPU is left out."""
        if self.s.quick:
            return  # CI: timings do not matter, time does
        budget = min(QUIET_WAIT_PER_RUN_S, self.quiet_budget_s)
        waited = 0.0
        while True:
            own = server.proc.cpu_s() if server is not None else 0.0
            before = system_busy_s()
            time.sleep(QUIET_WINDOW_S)
            busy = system_busy_s() - before
            if server is not None:
                busy -= server.proc.cpu_s() - own
            busy /= QUIET_WINDOW_S
            if busy < QUIET_BUSY_CORES or waited >= budget:
                break
            waited += QUIET_WINDOW_S
        self.quiet_budget_s -= waited
        self.quiet_waits.append((waited, busy))
        if busy >= QUIET_BUSY_CORES:
            self.note(
                "other processes kept the machine busy during some runs (see 'other processes' "
                "above); their numbers are pessimistic"
            )

    def settle_rss(self, server: Server) -> int:
        time.sleep(self.s.settle_s)
        return server.proc.rss_kib()

    # --- the references ------------------------------------------------------------------

    def generator_ceiling(self) -> None:
        self.say("generator ceiling: plain UDP against the generator's own C echo")
        max_s = self.s.runs * (self.s.duration_s + 10) + 30
        server = servers.start_cecho(self.lg.binary, self.workdir, max_s)
        try:
            self.request_series(server, "cecho", (32,), mode="udp", label="C UDP echo")
        finally:
            server.stop()

    def python_echo(self) -> None:
        self.say("Python asyncio UDP echo (the floor for any Python server)")
        server = servers.start_pyecho(self.workdir)
        try:
            out = self.server_results("pyecho")
            out["rss_idle_kib"] = self.settle_rss(server)
            levels = self.s.reference_concurrency
            self.request_series(server, "pyecho", levels, mode="udp", label="Python UDP echo")
            out["rss_after_get_kib"] = server.proc.rss_kib()
        finally:
            server.stop()
        self.note("Python UDP echo: plain UDP, no DTLS and no handshakes (it is the floor)")

    def reference(self, name: str) -> None:
        start = {"libcoap": servers.start_libcoap, "aiocoap": servers.start_aiocoap}[name]
        self.say(f"reference: {name}")
        try:
            server = start(self.workdir)
        except StartError as exc:
            self.error(f"{name} did not start: {exc}")
            return
        try:
            out = self.server_results(name)
            out["rss_idle_kib"] = self.settle_rss(server)
            levels = self.s.reference_concurrency
            if name == "aiocoap" and any(n > 64 for n in levels):
                levels = tuple(n for n in levels if n <= 64)
                self.note(
                    "aiocoap stock: 256 clients not measured: its DTLS server keeps at most "
                    "64 sessions and evicts the oldest"
                )
            self.request_series(server, name, levels)
            out["rss_after_get_kib"] = server.proc.rss_kib()
            self.handshake_series(name, lambda i, variant: server)
            if name == "aiocoap":
                self.note(
                    "aiocoap stock: ignores close_notify, so every handshake leaves a session "
                    "behind (RSS after handshakes)"
                )
        except LoadgenError as exc:
            self.error(f"{name}: {exc}")
        finally:
            server.stop()

    # --- coapdev -------------------------------------------------------------------------

    def coapdev_main(self) -> None:
        self.say("coapdev gateway: fresh state directory, onboarding one client with the library")
        state = self.workdir / "coapdev-main"
        out = self.server_results("coapdev")
        try:
            server = servers.start_gateway("main", state, self.workdir)
        except StartError as exc:
            self.error(f"coapdev gateway did not start: {exc}")
            return
        try:
            try:
                servers.onboard(server)
            except Exception as exc:
                self.error(f"onboarding the benchmark client failed: {exc!r}")
                return
            out["rss_idle_kib"] = self.settle_rss(server)
            self.say(f"coapdev idle RSS: {out['rss_idle_kib'] / 1024:.1f} MiB")
            levels = self.s.concurrency
            if "scaling" in self.only:  # the doubling series: one more level, same gateway
                levels = tuple(sorted(set(levels) | set(self.s.scaling_concurrency)))
            self.request_series(server, "coapdev", levels)
            out["rss_after_get_kib"] = server.proc.rss_kib()
            if not server.proc.alive():
                return
            out["onboard"] = self.onboarding(server, "coapdev")
            self.serving(server, "the onboarding runs")
            out["hold"] = self.hold(server, "coapdev")
            out["rss_after_hold_kib"] = server.proc.rss_kib()
            self.serving(server, "holding sessions")
            out["sustained"] = self.sustained(server)
            out["rss_after_sustained_kib"] = out["sustained"].get("rss_at_done_kib")
            self.serving(server, "the sustained run")
            # Last: script-backed requests go through aiocoap's message layer, which keeps
            # every exchange for 247 s; measured earlier, that memory would be in every
            # RSS figure above.
            self.request_series(
                server,
                "coapdev",
                self.s.script_concurrency,
                path="script",
                duration_s=self.s.script_duration_s,
                query_per_client=True,  # equal GETs would share one run: count real runs
            )
            out["rss_after_script_kib"] = server.proc.rss_kib()
            # A persistent handler: one process answers every GET.  Each client asks with
            # its own query (c=N), so no two requests are equal and none share an answer.
            self.request_series(
                server,
                "coapdev",
                (32,),
                path="handler",
                duration_s=self.s.script_duration_s,
                query_per_client=True,
            )
            out["rss_after_handler_kib"] = server.proc.rss_kib()
        except LoadgenError as exc:
            self.error(f"coapdev: {exc}")
        finally:
            server.stop()
        if server.credentials is not None:
            out["cold_start_s"] = self.cold_starts(state, server)

    def spawn_floor(self) -> None:
        """What a bare asyncio loop gets spawning the same command as /script: the floor
        script-backed GETs are measured against."""
        argv = servers.script_argv()
        out = self.results.setdefault("spawn_floor", {})
        for concurrency in self.s.script_concurrency:
            runs = []
            for i in range(self.s.runs):
                self.quiet()
                proc = subprocess.run(
                    [
                        sys.executable,
                        str(servers.HERE / "spawn_floor.py"),
                        str(concurrency),
                        str(self.s.script_duration_s),
                        *argv,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=self.s.script_duration_s + 60,
                )
                if proc.returncode != 0:
                    self.error(f"spawn floor failed: {proc.stderr.strip()[-500:]}")
                    return
                result = json.loads(proc.stdout)
                self.say(
                    f"bare asyncio spawn loop ({' '.join(argv)}), {concurrency} at once, "
                    f"run {i + 1}: {result['rate']:.0f}/s"
                )
                runs.append(result)
            out[str(concurrency)] = runs

    def onboarding(self, server: Server, label: str, count: int | None = None) -> list[dict]:
        """Full handshake with the factory key + POST /onboard + answer, one after another."""
        assert server.factory_key is not None
        count = count or self.s.onboard_count
        runs = []
        for i in range(self.s.runs if count == self.s.onboard_count else 1):
            self.quiet(server)
            run = self.lg.run(
                "handshake",
                server=server.proc,
                host=HOST,
                port=server.port,
                clients=1,
                request=True,
                method="post",
                path="onboard",
                content_format=60,
                payload_hex=servers.onboarding_payload().hex(),
                identity="Client_identity",
                key_hex=server.factory_key.encode().hex(),
                count=count,
                duration=120,
                timeout_ms=2000,
            )
            name = f"{label} handshake + onboarding, run {i + 1}"
            self.check(name, run, clients=None, mode="handshake")
            r = run.result
            self.say(
                f"{name}: {r['count']} onboardings, p50 {r['latency_ms']['p50']:.2f} ms, "
                f"p99 {r['latency_ms']['p99']:.2f} ms"
            )
            runs.append(run.to_json())
        return runs

    def hold(self, server: Server, label: str, n: int | None = None) -> dict:
        n = n or self.s.hold_sessions
        self.quiet(server)
        run = self.lg.run(
            "hold",
            server=server.proc,
            sample_every_s=0.5,
            host=HOST,
            port=server.port,
            clients=n,
            duration=self.s.hold_duration_s,
            count=n * 100,
            interval_ms=self.s.hold_interval_ms,
            timeout_ms=REQUEST_TIMEOUT_MS,
            ramp=64,
            setup_timeout=60,
            **server.credentials.loadgen_options(),  # type: ignore[union-attr]
        )
        name = f"{label}: {n} live sessions"
        self.check(name, run, clients=n, mode="hold")
        result = run.to_json()
        result["rss_max_kib"] = max([point[1] for point in run.series] + [run.rss_at_done_kib])
        r = run.result
        self.say(
            f"{name}: {r['sessions']} established, {r['sessions_unserved']} never answered, "
            f"{r['count']} requests, RSS {result['rss_max_kib'] / 1024:.1f} MiB"
        )
        return result

    def sustained(self, server: Server) -> dict:
        seconds = self.s.sustained_s
        self.say(f"coapdev sustained load: 32 clients for {seconds:.0f} s, RSS sampled")
        run = self.requests(server, 32, duration_s=seconds, sample_every_s=self.s.sample_every_s)
        self.check("coapdev sustained run", run, clients=32, mode="coap")
        r = run.result
        self.say(
            f"coapdev sustained: {r['rate']:.0f}/s, p99 {r['latency_ms']['p99']:.2f} ms, "
            f"max {r['latency_ms']['max']:.1f} ms, longest pause {r['max_gap_ms']:.1f} ms, "
            f"RSS {run.rss_at_ready_kib / 1024:.1f} -> {run.rss_at_done_kib / 1024:.1f} MiB"
        )
        return run.to_json()

    def long_run(self, server: Server, stored: int) -> dict:
        """32 clients for over two minutes: the gateway writes last-seen times out every
        60 s, and with many stored clients that write is long; does it show as a pause?"""
        self.say(f"coapdev ({stored} stored): 32 clients for {STORE_FLUSH_RUN_S:.0f} s")
        run = self.requests(server, 32, duration_s=STORE_FLUSH_RUN_S, sample_every_s=1.0)
        self.check(f"coapdev ({stored} stored) long run", run, clients=32, mode="coap")
        r = run.result
        self.say(
            f"coapdev ({stored} stored) long run: {r['rate']:.0f}/s, "
            f"p99 {r['latency_ms']['p99']:.2f} ms, max {r['latency_ms']['max']:.1f} ms, "
            f"longest pause {r['max_gap_ms']:.1f} ms"
        )
        self.serving(server, f"the long run ({stored} stored)")
        return run.to_json()

    def cold_starts(self, state: Path, main: Server) -> list[float]:
        """Process start to first answered request (a client already knocking)."""
        assert main.credentials is not None
        times = []
        for i in range(self.s.runs):
            port = free_udp_port(HOST)
            client = self.lg.start(
                "coap",
                host=HOST,
                port=port,
                clients=1,
                count=1,
                duration=2,
                wait_ready=20,
                hs_timer_ms=50,
                timeout_ms=1000,
                **main.credentials.loadgen_options(),
            )
            proc = servers.gateway_proc(
                "coapdev gateway (cold start)", state, port, self.workdir / f"cold-{i}.log"
            )
            try:
                time.sleep(0.2)  # the client is knocking already
                t0 = time.time()
                proc.start()
                out, _ = client.communicate(timeout=40)
                result = json.loads(out)
                first = result.get("first_response_unix", 0)
                if result.get("count", 0) < 1 or first <= 0:
                    self.error(f"cold start {i + 1}: no answer ({proc.how_it_ended()})")
                    continue
                times.append(first - t0)
                self.say(f"coapdev cold start, run {i + 1}: {times[-1] * 1000:.0f} ms")
            except (subprocess.TimeoutExpired, ValueError) as exc:
                self.error(f"cold start {i + 1}: {exc!r}")
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait(timeout=5)
                proc.stop()
        return times

    def coapdev_stored(self) -> None:
        """Per-request cost and memory with 10 and with 10 000 stored clients; with the
        scaling scenario also 1000 and 100 000, and on the 10-client gateway, right after it
        settled, the sessions held (RSS per live session).

        Every level's gateway is started first; then the GET runs at 32 clients take
        turns between them (run 1 of each level, then run 2 in the reverse order, ...),
        so other load on the machine, which drifts over the minutes this takes, falls on
        every level alike: the ratio of CPU per GET compares runs made side by side.
        """
        levels: set[int] = set()
        if "stored" in self.only:
            levels |= {10, self.s.stored_clients}
        scaling = "scaling" in self.only
        if scaling:
            levels |= set(self.s.scaling_stored)
        started: dict[int, Server] = {}
        try:
            for n in sorted(levels):
                server = self.stored_gateway(n)
                if server is not None:
                    started[n] = server
            serving = dict(started)
            for i in range(self.s.runs):
                for n in sorted(serving, reverse=i % 2 == 1):
                    label = f"coapdev ({n} stored)"
                    try:
                        healthy = self.request_run(serving[n], f"coapdev-{n}", 32, i, label=label)
                    except LoadgenError as exc:
                        self.error(f"{label}: {exc}")
                        healthy = False
                    if not healthy:
                        del serving[n]
            fewest = min(levels, default=None)
            if scaling and fewest in serving:
                # After the GET runs, as on every other level: sessions held on the
                # settled gateway, RSS per live session above what it settled at.
                self.hold_sessions(serving[fewest], fewest)
            n = self.s.stored_clients
            if n in serving and "stored" in self.only:
                server, label = serving[n], f"coapdev ({n} stored)"
                out = self.server_results(f"coapdev-{n}")
                try:
                    out["hold"] = self.hold(server, label)
                    self.serving(server, f"holding sessions ({n} stored)")
                    server.factory_key = servers.factory_key(self.workdir / f"coapdev-{n}")
                    out["onboard"] = self.onboarding(server, label, count=10)
                    if not self.s.quick:
                        out["sustained"] = self.long_run(server, n)
                except LoadgenError as exc:
                    self.error(f"{label}: {exc}")
        finally:
            for server in started.values():
                server.stop()

    def hold_sessions(self, server: Server, n: int) -> None:
        """The scaling steps of live sessions on the gateway of ``n`` stored clients, each
        measured above the RSS the gateway settles at first."""
        out = self.server_results(f"coapdev-{n}")
        try:
            out["rss_before_hold_kib"] = self.settle_rss(server)
            for held in self.s.scaling_sessions:
                out[f"hold_{held}"] = self.hold(server, f"coapdev ({n} stored)", held)
                self.serving(server, f"holding {held} sessions ({n} stored)")
        except LoadgenError as exc:
            self.error(f"coapdev ({n} stored): {exc}")

    def stored_gateway(self, n: int) -> Server | None:
        """A gateway on a state directory of ``n`` stored clients, answering and settled
        (its idle RSS noted). None (the error reported) if it does not start or answer."""
        key = f"coapdev-{n}"
        out = self.server_results(key)
        state = self.workdir / key
        self.say(f"coapdev with {n} stored clients")
        try:
            creds = servers.populate_store(state, n)
            server = servers.start_gateway(key, state, self.workdir)
        except StartError as exc:
            self.error(f"coapdev with {n} stored clients did not start: {exc}")
            return None
        server.credentials = creds
        try:
            if not self.answers(server, "start"):
                server.stop()
                return None
            out["rss_idle_kib"] = self.settle_rss(server)
        except LoadgenError as exc:
            self.error(f"coapdev ({n} stored): {exc}")
            server.stop()
            return None
        except BaseException:
            server.stop()
            raise
        return server

    def coapdev_handshakes(self) -> None:
        """Full handshakes/s: a fresh gateway per run, each checked for a crash afterwards."""
        template = self.workdir / "coapdev-10"
        if not template.exists():
            servers.populate_store(template, 10)

        def start(i: int, variant: str) -> Server | None:
            state = self.workdir / f"coapdev-{variant}-{i}"
            shutil.copytree(template, state)
            try:
                server = servers.start_gateway(f"{variant}-{i}", state, self.workdir)
            except StartError as exc:
                self.error(f"coapdev gateway did not start: {exc}")
                return None
            server.credentials = servers.stored_credentials(state)
            return server

        self.handshake_series("coapdev", start)

    # --- the reconnect storm ---------------------------------------------------------------

    def storm(self) -> None:
        """N clients hold a session and an observation; the server restarts; all reconnect
        at once, resend their last request and register again; a change then checks
        every observation (coapdev, and libcoap beside it)."""
        out = self.results.setdefault("storm", {})
        for name in ("coapdev", "libcoap"):
            if name == "libcoap" and servers.libcoap_binary() is None:
                self.note("storm: no libcoap server on this machine, coapdev alone")
                continue
            for n in self.s.storm_clients:
                runs = []
                for i in range(self.s.runs):
                    try:
                        run = self.storm_run(name, n, i)
                    except (StartError, LoadgenError) as exc:
                        self.error(f"storm {name}, {n} clients, run {i + 1}: {exc}")
                        break
                    if run is not None:
                        runs.append(run)
                out.setdefault(name, {})[str(n)] = runs

    def storm_run(self, name: str, n: int, i: int) -> dict | None:
        label = f"storm {name}, {n} clients, run {i + 1}"
        options: dict[str, Any] = {
            "host": HOST,
            "clients": n,
            "path": "light",
            "change_hex": ",".join(STORM_CHANGES),
            "duration": self.s.storm_bound_s,
            "setup_timeout": 60,
            "storm_wait": 60,
            "timeout_ms": REQUEST_TIMEOUT_MS,
            "ramp": 64,
        }
        if name == "coapdev":
            template = self.workdir / f"storm-template-{n}"
            creds = self.workdir / f"storm-creds-{n}.txt"
            if not template.exists():
                servers.populate_store(template, n)
                servers.write_creds(template, creds, n)
            state = self.workdir / f"storm-{n}-{i}"
            shutil.copytree(template, state)
            server = servers.start_gateway(f"storm-{n}-{i}", state, self.workdir)
            server.credentials = servers.stored_credentials(state)
            options["creds"] = str(creds)

            def restart() -> Any:
                server.proc.stop()
                servers.restart_gateway(server)
                return server.proc
        else:
            server = servers.start_libcoap(self.workdir, log=f"libcoap-storm-{n}-{i}")
            assert server.credentials is not None
            options.update(server.credentials.loadgen_options())

            def restart() -> Any:
                server.proc.stop()
                again = servers.start_libcoap(
                    self.workdir, port=server.port, log=f"libcoap-storm-{n}-{i}-after"
                )
                server.proc = again.proc
                return server.proc

        try:
            options["port"] = server.port
            self.quiet(server)
            run = storm(self.lg, server=server.proc, restart=restart, **options).to_json()
            r = run
            setup = r["setup"]
            if name == "coapdev" and (setup["registered"] < n or setup["notified"] < n):
                self.error(
                    f"{label}: before the storm only {setup['registered']} of {n} observations "
                    f"registered, {setup['notified']} notified"
                )
            self.say(
                f"{label}: {r['answered']}/{n} answered again, all in "
                f"{r['all_answered_ms']:.0f} ms, p99 {r['reconnect_ms']['p99']:.0f} ms, "
                f"{r['notified']}/{n} observations restored, "
                f"{r['clients_retransmitting']} clients retransmitted, peak RSS "
                f"{r['rss_peak_kib'] / 1024:.1f} MiB (before: {r['rss_before_kib'] / 1024:.1f})"
            )
            if name == "coapdev":
                run["server_crashed"] = not self.answers(server, label)
            return run
        finally:
            server.stop()

    def doubling(self) -> None:
        """The doubling series on a gateway of its own, when the main gateway (whose series
        it otherwise is) did not run: fresh, so RSS per level is not a high-water mark left
        by the held sessions."""
        if "coapdev" in self.only:
            return
        key = "coapdev-doubling"
        state = self.workdir / key
        self.say("coapdev: GET/s and RSS per doubling of clients")
        creds = servers.populate_store(state, 10)
        server = servers.start_gateway(key, state, self.workdir)
        server.credentials = creds
        try:
            if not self.answers(server, "start"):
                return
            self.server_results(key)["rss_idle_kib"] = self.settle_rss(server)
            self.request_series(server, key, self.s.scaling_concurrency, label="coapdev")
        finally:
            server.stop()

    def scaling_summary(self) -> None:
        """Issue 15, section 4: one line per doubling, gathered from the runs above."""
        from . import report

        def levels(key: str) -> dict[str, list[dict]]:
            return self.results["servers"].get(key, {}).get("get", {})

        main = levels("coapdev")
        source = "coapdev" if all(str(n) in main for n in self.s.scaling_concurrency) else None
        source = source or "coapdev-doubling"
        clients = {}
        for n in self.s.scaling_concurrency:
            items = levels(source).get(str(n)) or []
            clients[str(n)] = {
                "get_per_s": report.median(report.field(items, "rate")),
                "rss_kib": report.median(report.field(items, "rss_at_done_kib")),
                "p99_ms": report.median(report.field(items, "latency_ms", "p99")),
            }
        stored = {}
        for n in self.s.scaling_stored:
            items = levels(f"coapdev-{n}").get("32") or []
            stored[str(n)] = {
                "get_per_s": report.median(report.field(items, "rate")),
                "cpu_us_per_get": report.median(report.field(items, "server_cpu_us_per_op")),
                "rss_idle_kib": self.results["servers"].get(f"coapdev-{n}", {}).get("rss_idle_kib"),
            }
        base = self.results["servers"].get(f"coapdev-{min(self.s.scaling_stored)}", {})
        sessions = {}
        for n in self.s.scaling_sessions:
            held = base.get(f"hold_{n}") or {}
            peak, idle = held.get("rss_max_kib"), base.get("rss_before_hold_kib")
            sessions[str(n)] = {
                "served": (held.get("sessions", 0) - held.get("sessions_unserved", 0))
                if held
                else None,
                "rss_kib": peak,
                "kib_per_session": (peak - idle) / n if peak and idle else None,
            }
        self.results["scaling"] = {
            "clients_source": source,
            "clients": clients,
            "stored": stored,
            "sessions": sessions,
        }

    def help_time(self) -> None:
        exe = Path(sys.executable).parent / "coapdev"
        argv = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "coapdev", "--help"]
        subprocess.run(argv, capture_output=True, timeout=60)  # warm the page cache
        times = []
        for _ in range(self.s.help_runs):
            t0 = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, timeout=60)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                self.error(f"coapdev --help exited with status {proc.returncode}")
                break
        self.results["help_s"] = times
        if times:
            self.say(f"coapdev --help: {sorted(times)[len(times) // 2] * 1000:.0f} ms")

    # --- all of it -----------------------------------------------------------------------

    def run_all(self) -> None:
        steps: list[tuple[set[str], Any]] = [
            ({"ceiling"}, self.generator_ceiling),
            ({"echo"}, self.python_echo),
            ({"spawn"}, self.spawn_floor),
            ({"libcoap"}, lambda: self.reference("libcoap")),
            ({"aiocoap"}, lambda: self.reference("aiocoap")),
            ({"coapdev"}, self.coapdev_main),
            ({"stored", "scaling"}, self.coapdev_stored),
            ({"handshakes"}, self.coapdev_handshakes),
            ({"storm"}, self.storm),
            ({"help"}, self.help_time),
            ({"scaling"}, self.doubling),
            ({"scaling"}, self.scaling_summary),
        ]
        for wanted, step in steps:
            if not wanted & self.only:
                continue
            try:
                step()
            except (StartError, LoadgenError) as exc:
                self.error(str(exc))
        self.results["elapsed_s"] = time.monotonic() - self.started
        self.results["quiet_waits"] = self.quiet_waits
        self.results["errors"] = self.errors
        self.results["notes"] = self.notes


def machine_info(workdir: Path) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info["openssl"] = _output(["openssl", "version"])
    libcoap = servers.libcoap_binary()
    # "-h" without its argument prints the usage (with the version) and exits
    banner = _output([libcoap, "-h"], lines=3) if libcoap else "not installed"
    info["libcoap"] = next((w[1:] for w in banner.split() if w.startswith("v4")), banner[:40])
    for package in ("aiocoap", "DTLSSocket"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:
            info[package] = "?"
    info["state_dir_filesystem"] = _output(["stat", "-f", "-c", "%T", str(workdir)])
    commit = _output(["git", "-C", str(servers.REPO), "rev-parse", "--short", "HEAD"])
    try:
        status = subprocess.run(
            ["git", "-C", str(servers.REPO), "status", "--porcelain", "coapdev", "gateway"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        status = ""
    info["commit"] = commit + (" (with uncommitted changes)" if status else "")
    return info


def _output(argv: list[str], lines: int = 1) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return " ".join(text[:lines]).strip() or "?"
