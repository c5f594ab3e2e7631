"""OCPP benchmark: N simulated OCPP 2.1 stations (one `vpp-sim` process) connected to one CSMS, the agent's or a bare
library one, over TLS on loopback (security profile 2, as shipped).

For each size, one after the other and each in a fresh process (so its CPU and memory are its own):
  * bare  – a CSMS of `ocpp.v21.ChargePoint`s on a `websockets` server: answers what stations send, then sends the
            same SetChargingProfile and UpdateDynamicSchedule calls the agent sends; nothing else.
  * agent – drivers.ocpp.csms.Csms with one OcppEvseDriver per station (what `vpp-agent run` builds for `[ocpp]`):
            its boot-time SetVariables, schema checks, background GetCompositeSchedule verification included.
The stations run in their own `vpp-sim` process, started by the CSMS process once it listens. Measured in the CSMS
process: connection set-up (from `sim.ready` until every station has booted and its EV's transaction has started),
activation latency (a setpoint change sent to every EVSE at once: time from the common start until each station's
answer, p50 / p99 over `--rounds` activations), CPU seconds per wall second over the whole run and in a quiet window
of meter traffic, and RSS (now, and its growth since before the stations came, per 100 stations). `simCPU` is the
stations' process CPU seconds per wall second during the activations: near 1.0 it is the simulator, one Python
process answering every station, that bounds the latency, not the CSMS.
Printed as a table with agent/bare ratios from the same run; no thresholds (the goal of issue 15, p99 <= 250 ms at
500 stations, is for a reader to compare). Usage: python bench/ocpp.py [--sizes 100 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# this file is named ocpp.py: its folder must come after the `ocpp` library on the path, or it would shadow it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT / "tests" / "ocpp"))
sys.path.append(str(BENCH))

from benchkit import start_vpp_sim, stop_processes  # noqa: E402
from ocppkit import HOST, Pki, make_ca, password_file, settings  # noqa: E402

from sim_devices.ports import free_port_block  # noqa: E402

METER_PERIOD_S = 5  # the agent asks TxUpdatedInterval 5 at boot; the bare run's stations are set to the same
QUIET_S = 10.0  # wall seconds of plain meter traffic measured for the idle CPU figure
SETUP_DEADLINE_S = 180.0


def sim_config(size: int, port: int, pki: Pki, passwords: Path) -> str:
    return (
        "[simulation]\nspeed = 1.0\ntick_s = 0.5\nbase_load_w = 0.0\n"
        f"[simulation.ocpp]\nurl = 'wss://{HOST}:{port}/ocpp'\nca_file = '{pki.ca}'\n"
        f"password_file = '{passwords}'\nmeter_period_s = {METER_PERIOD_S}\n"
        f"[[simulation.devices]]\nid = 'CP{{i:04d}}'\ncount = {size}\ntransport = 'ocpp'\nmodel = 'ocpp21_dc_bpt'\n"
        "[simulation.devices.params]\nsessions = [{ arrival_s = 0, departure_s = 86400, capacity_kwh = 60, "
        "soc = 0.6, target_soc = 0.8, min_soc = 0.2 }]\n"
    )


def station_ids(size: int) -> list[str]:
    return [f"CP{i:04d}" for i in range(1, size + 1)]


# ---- process figures -------------------------------------------------------------------------------------------
def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (the stations' `vpp-sim`), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def wait_until(check: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"not reached within {deadline_s:g} s: {what}")
        await asyncio.sleep(0.01)


# ---- the two CSMSs ----------------------------------------------------------------------------------------------
class AgentSide:
    """The agent's CSMS with one EVSE driver per station."""

    def __init__(self, size: int, port: int, pki: Pki, passwords: Path) -> None:
        from drivers.ocpp.csms import Csms
        from drivers.ocpp.evse import OcppEvseDriver

        self.drivers = [OcppEvseDriver(f"ev-{sid}", sid, 1) for sid in station_ids(size)]
        self.csms = Csms(settings(pki, passwords, port), self.drivers)

    async def start(self) -> None:
        await self.csms.start()

    async def stop(self) -> None:
        await self.csms.close()

    def ready(self) -> bool:
        return all(d.link is not None and d.transaction_id is not None for d in self.drivers)

    def activations(self, setpoint_w: float) -> list[Awaitable[Any]]:
        return [d.write_setpoint(setpoint_w) for d in self.drivers]

    async def prepare(self) -> None:
        for driver in self.drivers:
            await driver.write_lease_timeout(30.0)


class BareSide:
    """A bare `ocpp.v21` CSMS: library ChargePoints that answer and send the same two calls."""

    def __init__(self, size: int, port: int, pki: Pki, passwords: Path) -> None:
        self.size, self.port = size, port
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(pki.cert, pki.key)
        self.points: dict[str, Any] = {}
        self.transactions: dict[str, str] = {}
        self.profiled: set[str] = set()
        self.server: Any = None

    async def start(self) -> None:
        from ocpp import v21
        from ocpp.routing import on
        from websockets.asyncio.server import serve

        transactions = self.transactions

        class Point(v21.ChargePoint):  # type: ignore[misc]
            @on("BootNotification")
            async def boot(self, **_: Any) -> Any:
                return v21.call_result.BootNotification(current_time=_stamp(), interval=60, status="Accepted")

            @on("StatusNotification")
            async def status(self, **_: Any) -> Any:
                return v21.call_result.StatusNotification()

            @on("Heartbeat")
            async def heartbeat(self, **_: Any) -> Any:
                return v21.call_result.Heartbeat(current_time=_stamp())

            @on("TransactionEvent")
            async def transaction(self, transaction_info: dict[str, Any], event_type: str, **_: Any) -> Any:
                if event_type != "Ended":
                    transactions[self.id] = transaction_info["transaction_id"]
                return v21.call_result.TransactionEvent()

            @on("NotifyEVChargingNeeds")
            async def needs(self, **_: Any) -> Any:
                return v21.call_result.NotifyEVChargingNeeds(status="Accepted")

        async def handler(connection: Any) -> None:
            station = connection.request.path.rsplit("/", 1)[-1]
            point = Point(station, connection, response_timeout=5)
            self.points[station] = point
            with contextlib.suppress(Exception):
                await point.start()

        self.server = await serve(handler, HOST, self.port, ssl=self.tls, subprotocols=["ocpp2.1"],  # type: ignore[list-item]
                                  compression=None, ping_interval=20, ping_timeout=20)

    async def stop(self) -> None:
        self.server.close(close_connections=True)
        await self.server.wait_closed()

    def ready(self) -> bool:
        return len(self.transactions) == self.size and len(self.points) == self.size

    async def prepare(self) -> None:
        pass

    def activations(self, setpoint_w: float) -> list[Awaitable[Any]]:
        return [self._one(station, setpoint_w) for station in self.points]

    async def _one(self, station: str, setpoint_w: float) -> Any:
        from ocpp import v21

        point = self.points[station]
        if station not in self.profiled:
            self.profiled.add(station)
            profile = {"id": 1, "stack_level": 0, "charging_profile_purpose": "TxProfile",
                       "charging_profile_kind": "Dynamic", "transaction_id": self.transactions[station],
                       "max_offline_duration": 30, "invalid_after_offline_duration": True,
                       "charging_schedule": [{"id": 1, "charging_rate_unit": "W", "charging_schedule_period": [
                           {"start_period": 0, "setpoint": setpoint_w, "operation_mode": "CentralSetpoint"}]}]}
            return await point.call(v21.call.SetChargingProfile(evse_id=1, charging_profile=profile))
        return await point.call(v21.call.UpdateDynamicSchedule(charging_profile_id=1,
                                                               schedule_update={"setpoint": setpoint_w}))


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- one run in a child process -------------------------------------------------------------------------------
async def run(kind: str, size: int, rounds: int, work: Path) -> dict[str, float]:
    if kind == "agent":
        from agent.logs import configure_logging

        configure_logging("warning", "json")
    pki = make_ca(work)
    passwords = password_file(work, station_ids(size))
    port = free_port_block(1)
    side: AgentSide | BareSide = (AgentSide if kind == "agent" else BareSide)(size, port, pki, passwords)
    await side.start()
    rss0, cpu0, wall0 = rss_mb(), cpu_s(), time.monotonic()
    sim = await start_vpp_sim(sim_config(size, port, pki, passwords), work)
    assert sim.stderr is not None
    drain = asyncio.create_task(_drain(sim.stderr))
    try:
        t0 = time.monotonic()
        await wait_until(side.ready, SETUP_DEADLINE_S, f"{size} stations connected with a transaction")
        setup_s = time.monotonic() - t0
        await side.prepare()
        latencies: list[float] = []
        failures = 0
        busy = 0.0  # wall seconds spent in measured activations
        sim_busy_cpu = 0.0  # the stations' process CPU seconds in them
        for index in range(rounds + 1):  # round 0 sends the profiles (SetChargingProfile): not counted
            setpoint = -1000.0 - 500.0 * (index % 4)
            start = time.perf_counter()

            async def timed(call: Awaitable[Any], start: float = start) -> float | None:
                try:
                    await call
                except Exception:
                    return None
                return time.perf_counter() - start

            sim_cpu0 = process_cpu_s(sim.pid)
            results = await asyncio.gather(*(timed(c) for c in side.activations(setpoint)))
            if index > 0:
                latencies += [r for r in results if r is not None]
                failures += sum(1 for r in results if r is None)
                busy += time.perf_counter() - start
                sim_busy_cpu += process_cpu_s(sim.pid) - sim_cpu0
            await asyncio.sleep(1.0)  # let background checks (the agent's composite schedule) settle
        cpu1, wall1 = cpu_s(), time.monotonic()
        await asyncio.sleep(QUIET_S)
        quiet_cpu = (cpu_s() - cpu1) / (time.monotonic() - wall1)
        total_cpu = (cpu_s() - cpu0) / (time.monotonic() - wall0)
        return {
            "setup_s": setup_s,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "acks": len(latencies), "failures": failures,
            "sim_cpu_in_activation": sim_busy_cpu / busy if busy else float("nan"),
            "cpu_per_s": total_cpu, "quiet_cpu_per_s": quiet_cpu,
            "rss_mb": rss_mb(), "peak_rss_mb": rss_mb("VmHWM"), "rss_growth_mb": rss_mb() - rss0,
        }
    finally:
        await stop_processes(sim)
        drain.cancel()
        await side.stop()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def run_child(kind: str, size: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--sizes", str(size), "--rounds", str(rounds), "--work", work],
            capture_output=True, text=True, check=False, cwd=ROOT,
        )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{kind} run at {size} stations failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--rounds", type=int, default=5, help="activations measured per run")
    parser.add_argument("--child", choices=["bare", "agent"])
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child:
        figures = asyncio.run(run(args.child, args.sizes[0], args.rounds, Path(args.work)))
        print(json.dumps(figures))
        return
    print(f"OCPP benchmark: TLS loopback, {args.rounds} activations per run, {os.cpu_count()} cores, "
          f"meter values every {METER_PERIOD_S} s")
    header = (f"{'stations':>8} {'run':>5} {'setup s':>8} {'p50 ms':>7} {'p99 ms':>7} {'acks':>5} {'fail':>4} "
              f"{'CPU/s':>6} {'quietCPU':>8} {'RSS MB':>7} {'+RSS/100':>8} {'simCPU':>6}")
    rows = [header]
    for size in args.sizes:
        bare = run_child("bare", size, args.rounds)
        agent = run_child("agent", size, args.rounds)
        for name, fig in (("bare", bare), ("agent", agent)):
            rows.append(f"{size:>8} {name:>5} {fig['setup_s']:>8.2f} {fig['p50_ms']:>7.1f} {fig['p99_ms']:>7.1f} "
                        f"{fig['acks']:>5.0f} {fig['failures']:>4.0f} {fig['cpu_per_s']:>6.3f} "
                        f"{fig['quiet_cpu_per_s']:>8.3f} {fig['rss_mb']:>7.1f} "
                        f"{fig['rss_growth_mb'] / (size / 100):>8.1f} {fig['sim_cpu_in_activation']:>6.2f}")

        def ratio(key: str, agent: dict[str, float] = agent, bare: dict[str, float] = bare) -> str:
            return f"{agent[key] / bare[key]:.2f}" if bare[key] else "n/a"

        rows.append(f"{'':>8} agent/bare: setup {ratio('setup_s')}, p50 {ratio('p50_ms')}, p99 {ratio('p99_ms')}, "
                    f"CPU {ratio('cpu_per_s')}, quiet CPU {ratio('quiet_cpu_per_s')}; agent CPU per 100 stations "
                    f"{agent['quiet_cpu_per_s'] / (size / 100):.3f} s/s (quiet), "
                    f"{agent['cpu_per_s'] / (size / 100):.3f} s/s (whole run)")
        print("\n".join(rows[-3:]), flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
