"""vpp-sim started by sitekit.shipped_sim recovers when a port of its block was taken before it could bind: the
shipped config is written again on a new block and the simulator serves there (sim_devices/ports.py)."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

from sitekit import HOST, SHIPPED_PORTS, shipped_sim

from sim_devices.ports import address_in_use, free_port_block, release_port_blocks


def device_ports(config: Path) -> list[int]:
    """The Modbus ports the simulator serves (its MQTT devices use a broker, not a port of the block)."""
    devices = tomllib.loads(config.read_text())["simulation"]["devices"]
    return [d["port"] for d in devices if "port" in d]


async def test_vpp_sim_moves_to_a_new_block_when_a_port_is_taken(tmp_path: Path) -> None:
    taken_base = free_port_block(SHIPPED_PORTS)
    release_port_blocks({taken_base})  # from here on, like a port of a program that knows nothing of reservations
    picks: list[int] = []

    def pick(count: int) -> int:
        picks.append(taken_base if not picks else free_port_block(count))
        return picks[-1]

    with socket.socket() as squatter:
        squatter.bind((HOST, taken_base + 1))  # the first device port of the shipped config
        squatter.listen()
        async with shipped_sim(tmp_path, pick=pick) as sim:
            assert len(picks) == 2, picks
            ports = device_ports(sim.config)
            assert ports and all(picks[1] <= p < picks[1] + SHIPPED_PORTS for p in ports), (picks, ports)
            for port in sorted(set(ports)):  # served where the config says: a Modbus client connects
                with socket.create_connection((HOST, port), timeout=5):
                    pass
            assert sim.proc.returncode is None
    assert sim.proc.returncode == 0, sim.output.decode(errors="replace")[-2000:]


def test_vpp_sims_refusal_is_read_as_a_taken_port() -> None:
    """The text launch_sim raises when vpp-sim exits is what address_in_use looks for (vpp-sim's own line says only
    "in use or not permitted"; pymodbus' line before it names EADDRINUSE)."""
    output = (
        "Failed to start server [Errno 98] error while attempting to bind on address ('127.0.0.1', 27505): "
        "address already in use\nvpp-sim: cannot listen on 127.0.0.1:27505 (in use or not permitted)\n"
    )
    assert address_in_use(OSError(f"vpp-sim exited with 1 before serving config.toml: {output}"))
