"""Generate docs/devices.md from the register maps, so the documented tables cannot drift from the data.

Run `python -m drivers.docs > docs/devices.md`; a test fails when the committed file differs from this output.
"""

from __future__ import annotations

import sys

from drivers.mqtt_map import MqttMap, available_mqtt_maps, load_mqtt_map
from drivers.registermap import RegisterMap, RegisterRow, Step, available_maps, load_map

HEADER = """# Device register maps

Generated from `drivers/maps/*.toml` and `drivers/mqtt_maps/*.toml` by
`python -m drivers.docs > docs/devices.md`; do not edit by hand.

Addresses are as written in the map: Modbus PDU addresses (0-based; `mbpoll -0`) unless the map says
`address_base = 1` (the vendor's 1-based register numbers; the PDU address is one less). Reads use function 3
(holding) or 4 (input) as each map says; writes use 16 or 6. Bytes within a register are big-endian unless the map
says `byte_order = "little"`; multi-register values use the map's word order (`big`: high word first). The agent's
value in SI units is `(raw × scale × 10^SF + offset) × unit factor` (× the referenced value for a percentage),
negated where **invert** is set (the device's sign convention is the opposite of the agent's: power > 0 flows from
the grid into the device). A status row's **enum** maps device codes to the agent's states; a code it does not list
makes the asset not operable (no setpoints, still polled) and is reported as `unmapped_status`.
Each real product's map is checked by a golden test (`tests/golden/`) against words worked from its source document.
"""


def _scale(row_scale: float, sf_address: int | None) -> str:
    parts = [] if row_scale == 1 else [f"×{row_scale:g}"]
    if sf_address is not None:
        parts.append(f"×10^[{sf_address}]")
    return " ".join(parts) or "1"


def _notes(row: RegisterRow) -> str:
    notes = []
    if row.enum:
        notes.append("enum " + ", ".join(f"{k}→{v}" for k, v in row.enum.items()))
    if row.ev_connected_codes is not None:
        notes.append(f"EV connected in {list(row.ev_connected_codes)}")
    if row.missing:
        notes.append("missing if " + ", ".join(hex(v) for v in row.missing))
    if row.percent_of:
        notes.append(f"% of {row.percent_of}")
    if row.negate_if:
        notes.append(f"negated while {row.negate_if}")
    if row.minimum is not None:
        notes.append(f"at least {row.minimum:g}")
    if row.offset:
        notes.append(f"offset {row.offset:g}")
    return "; ".join(notes)


def _step(step: Step) -> str:
    value = step.value
    if isinstance(value, str | int):
        shown = str(value)
    else:
        shown = f"charge {value.charge} / discharge {value.discharge} / idle {value.idle}"
    return f"{step.row} ← {shown}" + (f" (then wait {step.delay_s:g} s)" if step.delay_s else "")


def render_map(register_map: RegisterMap) -> str:
    model = register_map.model
    control = register_map.control
    lines = [f"## {model.name} (`{model.id}`)", ""]
    if model.source:
        lines += [f"Source: {model.source}" + (f" · products: {model.product}" if model.product else ""), ""]
    lines += [
        f"Kind `{model.kind.value}` · manufacturer {model.manufacturer} · address base {model.address_base} · "
        f"word order `{model.word_order}` · byte order `{model.byte_order}` · reads: "
        + ", ".join(f"{s.count} registers at PDU {s.address} (function {s.function})" for s in register_map.spans),
        "",
    ]
    if control.on_connect:
        lines += ["Writes at connect: " + "; ".join(_step(s) for s in control.on_connect), ""]
    if control.setpoint:
        lines += ["A setpoint writes, in order: " + "; ".join(_step(s) for s in control.setpoint), ""]
    if control.no_lease is not None:
        lines += [f"**No lease**: the device keeps its last setpoint if the agent stops ({control.no_lease}); the "
                  "driver logs `asset.no_lease` at every connect.", ""]
    if control.min_charge_w or control.min_discharge_w or control.min_charge_row:
        live = f" or {control.min_charge_row} now" if control.min_charge_row else ""
        lines += [f"Minimum power: charge {control.min_charge_w:g} W{live}, discharge {control.min_discharge_w:g} W "
                  "(smaller requests are written as 0)", ""]
    lines += [
        "| address | type | words | field | unit | scale | invert | access | notes | description |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(register_map.spec.registers, key=lambda r: r.address):
        words = (row.word_order or model.word_order) if row.width > 1 and row.type != "string" else ""
        kind = row.type + (f"[{row.length}]" if row.length else "")
        kind += f" bits {row.bits[0]}..{row.bits[1]}" if row.bits else ""
        lines.append(
            f"| {row.address} | {kind} | {words} | {row.field or f'({row.name})'} | {row.unit} | "
            f"{_scale(row.scale, row.scale_factor)} | {'yes' if row.invert else ''} | {row.access} | "
            f"{_notes(row)} | {row.description} |"
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
