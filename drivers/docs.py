"""Generate docs/devices.md from the register maps, so the documented tables cannot drift from the data.

Run `python -m drivers.docs > docs/devices.md`; a test fails when the committed file differs from this output.
"""

from __future__ import annotations

import sys

from drivers.mqtt_map import MqttMap, available_mqtt_maps, load_mqtt_map
from drivers.registermap import RegisterMap, available_maps, load_map

HEADER = """# Device register maps

Generated from `drivers/maps/*.toml` and `drivers/mqtt_maps/*.toml` by
`python -m drivers.docs > docs/devices.md`; do not edit by hand.

Addresses are Modbus PDU addresses (0-based; `mbpoll -0`), holding registers (read: function 3; write:
function 16). Bytes within a register are big-endian; 32-bit values use two registers in the map's word order
(`big`: high word first). The agent's value in SI units is
`raw × scale × 10^SF × unit factor`, negated where **invert** is set (the device's sign convention is the
opposite of the agent's: power > 0 flows from the grid into the device).
"""


def _scale(row_scale: float, sf_address: int | None) -> str:
    parts = [] if row_scale == 1 else [f"×{row_scale:g}"]
    if sf_address is not None:
        parts.append(f"×10^[{sf_address}]")
    return " ".join(parts) or "1"


def render_map(register_map: RegisterMap) -> str:
    model = register_map.model
    lines = [
        f"## {model.name} (`{model.id}`)",
        "",
        f"Kind `{model.kind.value}` · manufacturer {model.manufacturer} · default word order `{model.word_order}` · "
        + "reads: "
        + ", ".join(f"{s.count} registers at {s.address}" for s in register_map.spans),
        "",
        "| address | type | words | field | unit | scale | invert | access | description |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(register_map.spec.registers, key=lambda r: r.address):
        words = (row.word_order or model.word_order) if row.width == 2 else ""
        lines.append(
            f"| {row.address} | {row.type} | {words} | {row.field or f'({row.name})'} | {row.unit} | "
            f"{_scale(row.scale, row.scale_factor)} | {'yes' if row.invert else ''} | {row.access} | "
            f"{row.description} |"
        )
    return "\n".join(lines) + "\n"


MQTT_HEADER = """
# MQTT device maps

Generated from `drivers/mqtt_maps/*.toml`. A device publishes one JSON object on `<base topic>/<telemetry>` and
takes commands as JSON objects on `<base topic>/<command>` (the base topic is the asset's `topic` in config.toml).
Keys with dots are nested objects (`bms.soc_pct` is `{"bms": {"soc_pct": ...}}`). The agent's value is
`value × scale × unit factor`, negated where **invert** is set. Telemetry older than `stale_after_s` fails the read.
"""


def render_mqtt_map(mqtt_map: MqttMap) -> str:
    model = mqtt_map.model
    lines = [
        f"## {model.name} (`{model.id}`)",
        "",
        f"Kind `{model.kind.value}` · telemetry `<base>/{model.telemetry}` · commands `<base>/{model.command}` · "
        f"stale after {model.stale_after_s:g} s",
        "",
        "| key | field | unit | scale | invert | access | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in mqtt_map.spec.fields:
        lines.append(
            f"| `{row.key}` | {row.field} | {row.unit} | {row.scale:g} | {'yes' if row.invert else ''} | "
            f"{row.access} | {row.description} |"
        )
    return "\n".join(lines) + "\n"


def render_all() -> str:
    modbus = "".join("\n" + render_map(load_map(map_id)) for map_id in available_maps())
    mqtt = "".join("\n" + render_mqtt_map(load_mqtt_map(map_id)) for map_id in available_mqtt_maps())
    return HEADER + modbus + MQTT_HEADER + mqtt


if __name__ == "__main__":
    sys.stdout.write(render_all())
