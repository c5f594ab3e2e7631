"""SimSite: a configured site served on real sockets, with a physics ticker.

    async with SimSite.from_config(cfg) as site:      # servers listening, ticker running
        site.devices["ev1"].soc                        # physics objects
        site.faults("ev1").set_offline()               # fault injection

With a ManualClock there is no ticker: tests call `site.step(dt)` and nothing moves between calls.
Devices with `transport = "mqtt"` are served by one MqttDeviceServer (`site.mqtt`), started and stopped with the
Modbus servers; it publishes on wall time even with a ManualClock (the state it publishes only moves on step()).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections import defaultdict
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from agent.addressing import Placement
from sim_devices.build import build_site
from sim_devices.clock import Clock, ManualClock, SimClock
from sim_devices.config import OcppSimConfig, SimulationConfig, SimulationError
from sim_devices.faults import DeviceFaults, FaultGroup, FaultTimeline, TimelineError, load_timeline
from sim_devices.maps import load_map
from sim_devices.meter import DCMeter
from sim_devices.mqtt_codec import load_mqtt_model
from sim_devices.mqtt_server import MqttDeviceServer, MqttEndpoint
from sim_devices.registers import DeviceCodec
from sim_devices.server import DeviceEndpoint, PortServer
from sim_devices.site import Site

if TYPE_CHECKING:
    from sim_devices.ocpp_station import OcppStations

log = structlog.get_logger(__name__)

# File descriptors kept free for clients, logs and the loop beyond one listener per port.
FD_HEADROOM = 256
STOP_TIMEOUT_S = 0.8


def ensure_fd_limit(listeners: int) -> None:
    """Raise the soft fd limit if needed: each port is a listener plus at least one client connection."""
    need = 2 * listeners + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        raise SimulationError(
            f"{listeners} ports need about {need} file descriptors but the limit is {soft}: raise `ulimit -n` or "
            "put devices behind gateways (units_per_port > 1)"
        )


class SimSite:
    """A running simulated site: physics, Modbus servers, faults and (with a real-time clock) a ticker."""

    def __init__(self, config: SimulationConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else SimClock(config.speed, config.start)
        self.site: Site = build_site(config, self.clock.start)
        self.devices = {**self.site.devices, **self.site.meters}
        self.placements: dict[str, Placement] = {p.id: p for _, p in config.placements()}
        self.endpoints: dict[str, DeviceEndpoint] = {}
        self.mqtt_endpoints: dict[str, MqttEndpoint] = {}
        self._faults: dict[str, DeviceFaults] = {}
        by_port: dict[int, list[DeviceEndpoint]] = defaultdict(list)
        ocpp_devices: list[tuple[str, list[Any], DeviceFaults, str]] = []
        for group, placement in config.placements():
            if group.transport == "ocpp":  # a station dials the CSMS: offline = link dropped and kept down
                evses = [self.devices[i] for i in group.evse_ids(placement.id)]
                faults = DeviceFaults(placement.id, FaultGroup(evses), transport="ocpp")
                self._faults[placement.id] = faults
                ocpp_devices.append((placement.id, evses, faults, group.model))
                continue
            physics = self.devices[placement.id]
            if group.transport == "mqtt":
                faults = DeviceFaults(placement.id, physics)  # offline = silent on the broker, no listener
                self._faults[placement.id] = faults
                self.mqtt_endpoints[placement.id] = MqttEndpoint(
                    placement.id, group.device_topic(placement.id), load_mqtt_model(group.model), physics, faults
                )
                continue
            if group.transport == "sunspec":  # a SunSpec image of the same physics (sim_devices/sunspec)
                from sim_devices.sunspec.image import SunSpecEndpoint, SunSpecImage

                faults = DeviceFaults(placement.id, physics, self._offline_hook(placement))
                image = SunSpecImage(group.model, physics, placement.id, group.sunspec_order)  # type: ignore[arg-type]
                endpoint = SunSpecEndpoint(placement.id, placement.unit_id, image, faults)
                self.endpoints[placement.id] = endpoint  # type: ignore[assignment]
                self._faults[placement.id] = faults
                by_port[placement.port].append(endpoint)  # type: ignore[arg-type]
                continue
            maxima = physics.field_maxima() if isinstance(physics, DCMeter) else None
            codec = DeviceCodec(load_map(group.model), maxima)
            faults = DeviceFaults(placement.id, physics, self._offline_hook(placement))
            endpoint = DeviceEndpoint(placement.id, placement.unit_id, physics, codec, faults)  # type: ignore[arg-type]
            self.endpoints[placement.id] = endpoint
            self._faults[placement.id] = faults
            by_port[placement.port].append(endpoint)
        self.servers: dict[int, PortServer] = {
            port: PortServer(config.host, port, eps) for port, eps in sorted(by_port.items())
        }
        self.mqtt: MqttDeviceServer | None = (
            MqttDeviceServer(config.mqtt_settings, list(self.mqtt_endpoints.values())) if self.mqtt_endpoints else None
        )
        self.ocpp: OcppStations | None = None
        if ocpp_devices:  # ocpp and websockets are imported only for a site with OCPP stations
            from sim_devices.ocpp_station import OCPP_VERSIONS, OcppStations, StationSpec

            specs = [StationSpec(sid, evses, faults, OCPP_VERSIONS[model])
                     for sid, evses, faults, model in ocpp_devices]
            self.ocpp = OcppStations(config.ocpp or OcppSimConfig(), specs, self.clock)
        self.timeline: FaultTimeline | None = None
        if config.fault_timeline is not None:  # one home for fault scheduling: sim_devices/faults.py
            try:
                self.timeline = load_timeline(config.fault_timeline, config.fault_kinds_by_device())
            except TimelineError as exc:
                raise SimulationError(f"simulation.fault_timeline: {exc}") from exc
        self._ticker: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.manual = isinstance(self.clock, ManualClock)

    @classmethod
    def from_config(cls, config: SimulationConfig, clock: Clock | None = None) -> SimSite:
        return cls(config, clock)

    # ---- public API ------------------------------------------------------------------------------------
    @property
    def ports(self) -> dict[int, list[str]]:
        """Listening port → ids of the devices behind it (unit-id order)."""
        return {port: [e.device_id for e in srv.endpoints] for port, srv in self.servers.items()}

    def faults(self, device_id: str) -> DeviceFaults:
        return self._faults[device_id]

    def step(self, dt_s: float) -> float:
        """Advance a ManualClock site by dt sim-seconds; return the site's net energy (Wh)."""
        if not isinstance(self.clock, ManualClock):
            raise RuntimeError("site.step() is for ManualClock sites; a real-time site is stepped by its ticker")
        self.clock.advance(dt_s)
        return self.site.step(dt_s)

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        ensure_fd_limit(len(self.servers))
        try:
            for server in self.servers.values():
                await server.start()
        except BaseException:
            await self.stop()
            raise
        for port, ids in self.ports.items():
            log.info("sim.listening", host=self.config.host, port=port, devices=len(ids), first=ids[0])
        if self.ocpp is not None:
            self.ocpp.start()
        if self.mqtt is not None:
            self.mqtt.start()  # connects in the background and keeps reconnecting: a broker may come up later
        if not self.manual:
            self._ticker = asyncio.create_task(self._tick(), name="sim-ticker")
        if self.timeline is not None:
            task = asyncio.create_task(self.timeline.run(self.clock.seconds, self.faults), name="sim-timeline")
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    async def stop(self) -> None:
        """Stop the ticker, drop parked requests and close every listener (bounded by STOP_TIMEOUT_S)."""
        tasks = [t for t in (self._ticker, *self._side_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for faults in self._faults.values():
            faults.cancel_parked()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S / 2)
        self._ticker = None
        # The MQTT client bounds its own stop (clean disconnect, else cancel), so it runs beside the listeners
        # rather than under their timeout, which would cancel it half-way through a disconnect.
        mqtt_stop = asyncio.create_task(self.mqtt.stop(timeout_s=STOP_TIMEOUT_S / 2)) if self.mqtt else None
        if self.ocpp is not None:
            await self.ocpp.stop()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(s.stop() for s in self.servers.values()), return_exceptions=True),
                timeout=STOP_TIMEOUT_S,
            )
        finally:
            if mqtt_stop is not None:
                await mqtt_stop

    async def __aenter__(self) -> SimSite:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # ---- internals -------------------------------------------------------------------------------------
    async def _tick(self) -> None:
        """Step the physics to the clock's sim time every tick_s wall seconds."""
        while True:
            await asyncio.sleep(self.config.tick_s)
            dt = self.clock.seconds() - self.site.t_s
            if dt <= 0:
                continue
            try:
                self.site.step(dt)
            except Exception:  # a physics bug must be loud but must not silently stop time
                log.exception("sim.step_failed", dt_s=dt)

    def _offline_hook(self, placement: Placement) -> Callable[[bool], None]:
        """A device alone on its port goes offline by closing its listener (connects are refused)."""

        def hook(offline: bool) -> None:
            server = self.servers.get(placement.port)
            if server is None or len(server.endpoints) != 1:
                return  # behind a gateway: the gate swallows its requests instead
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            task = loop.create_task(server.set_listening(not offline))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

        return hook
