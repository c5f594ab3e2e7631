"""`vpp-sim --config FILE [--speed X] [--host H] [--fault ID:KIND[=VALUE]]...`.

Serves the `[simulation]` table of a config file until stopped: Modbus TCP devices on their ports, MQTT devices
(`transport = "mqtt"`) through the broker of `[simulation.mqtt]`, reconnecting whenever it restarts. A Modbus
group's `model` is a map id in drivers/maps or, as `vpp-agent` takes an asset's `map`, a path to a `.toml` map file
(relative to the working directory).

Reads only `[simulation]` (the agent's tables in the same file are ignored), logs one line per listening port,
stops within a second of SIGINT/SIGTERM, and exits with code 2 and the key path of the problem on a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import structlog

from sim_devices.config import SimulationConfig, SimulationError, load_simulation_file
from sim_devices.faults import apply_fault, parse_fault_spec
from sim_devices.runner import SimSite

log = structlog.get_logger("sim_devices.cli")


def configure_logging() -> None:
    """Console lines on a terminal, JSON otherwise (DESIGN.md §4)."""
    renderer = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vpp-sim", description="Serve simulated VPP devices over Modbus TCP and MQTT, and OCPP stations."
    )
    parser.add_argument("--config", required=True, help="TOML file with a [simulation] table")
    parser.add_argument("--speed", type=float, help="sim seconds per wall second (overrides the file)")
    parser.add_argument("--host", help="address the Modbus servers listen on (overrides the file; default 127.0.0.1)")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="ID:KIND[=VALUE]",
        help="inject a fault from the start: offline, slow=SECONDS, exception[=CODE], frozen, device=CODE, "
             "offset=WATTS (reports that much more power than flows); OCPP stations: offline, slow=SECONDS, "
             "device=CODE, reject[=REASON], silent, reboot (repeatable)",
    )
    parser.add_argument(
        "--fault-timeline", metavar="FILE",
        help="TOML file of [[faults]] entries (at_s, device, kind, for_s, value) applied on the sim clock; "
             "replaces [simulation] fault_timeline (docs/simulator.md)",
    )
    return parser.parse_args(argv)


async def serve(config: SimulationConfig, faults: list[tuple[str, str, float | None]] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with SimSite.from_config(config) as site:
        for device_id, kind, value in faults or []:
            apply_fault(site.faults(device_id), kind, value)
        log.info("sim.ready", devices=len(site.devices), ports=len(site.ports), mqtt_devices=len(site.mqtt_endpoints),
                 speed=config.speed)
        await stop.wait()
        log.info("sim.stopping")
    log.info("sim.stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_simulation_file(args.config)
        faults = [parse_fault_spec(spec) for spec in args.fault]
        kinds = config.fault_kinds_by_device()
        for device_id, kind, _ in faults:
            if device_id not in kinds:
                raise SimulationError(f"--fault names unknown device {device_id!r}")
            if kind not in kinds[device_id]:
                raise SimulationError(f"--fault {device_id}:{kind}: does not apply to this device "
                                      f"(its kinds: {', '.join(kinds[device_id])})")
        if args.fault_timeline is not None:
            config = config.with_fault_timeline(args.fault_timeline, "--fault-timeline")
        overrides = {k: v for k, v in (("speed", args.speed), ("host", args.host)) if v is not None}
        if overrides:
            # exclude_unset: a re-validated config must not look as if the file had set every default (validators
            # that check which keys were given would fire)
            config = config.model_validate({**config.model_dump(exclude_unset=True), **overrides})
    except SimulationError as exc:
        print(f"vpp-sim: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # an override that fails validation
        print(f"vpp-sim: invalid option: {exc}", file=sys.stderr)
        return 2
    configure_logging()  # only once we serve: a config error is one plain line on stderr
    try:
        asyncio.run(serve(config, faults))
    except (OSError, SimulationError) as exc:
        print(f"vpp-sim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
