"""Generate docs/devices.md from the register maps, so the documented tables cannot drift from the data.

Run `python -m drivers.docs > docs/devices.md`; a test fails when the committed file differs from this output.
"""

from __future__ import annotations

import sys

from drivers.mqtt_map import MqttMap, available_mqtt_maps, load_mqtt_map
from drivers.registermap import RegisterMap, RegisterRow, Span, Step, available_maps, load_map
from drivers.sunspec.profile import ProductMap, load_product, products_dir

HEADER = """# Device register maps

Generated from `drivers/maps/*.toml`, `drivers/mqtt_maps/*.toml` and `drivers/sunspec/products/*.toml` by
`python -m drivers.docs > docs/devices.md`; do not edit by hand.

Addresses are as written in the map: Modbus PDU addresses (0-based; `mbpoll -0`) unless the map says
`address_base = 1` (the vendor's 1-based register numbers; the PDU address is one less). Reads use function 3
(holding) or 4 (input), 1 (coils) or 2 (discrete inputs) as each map says; writes use 16 or 6, 5 or 15. Bytes
within a register are big-endian unless the map says `byte_order = "little"`; multi-register values use the map's
word order (`big`: high word first). The agent's
value in SI units is `(raw × scale × 10^SF + offset) × unit factor` (× the referenced value for a percentage),
negated where **invert** is set (the device's sign convention is the opposite of the agent's: power > 0 flows from
the grid into the device). A status row's **enum** maps device codes to the agent's states; a code it does not list
makes the asset not operable (no setpoints, still polled) and is reported as `unmapped_status`.
Each real product's map is checked by a golden test (`tests/golden/`) against words worked from its source document.
The simulator (`vpp-sim`) serves every map here with the device's own codes and sign, and `vpp-sim` takes a map by
path (`model = "site/maps/my_meter.toml"`) as `vpp-agent` does (`map = "site/maps/my_meter.toml"`).

## Map format v2: the keys, each with an example

A map is `schema = 2`, a `[model]` table, `[[registers]]` rows and an optional `[control]` table; `vpp-agent
check-config` refuses a mistake naming the map file, the row and the key. Schema-1 maps still load (they may use
only `field name address type unit scale scale_factor invert access word_order description`).

`[model]`:
- `read_function = 4`, `write_function = 6`: the rows' defaults (3 holding / 4 input registers; 16 / 6 writes).
- `address_base = 1`: addresses are the document's 1-based register numbers.
- `word_order = "little"` (low word first), `byte_order = "little"` (bytes of each register swapped); rows too.
- `max_registers = 60`, `blocks = [[0, 99], [100, 199]]`: registers per request; a request stays inside one block
  and reads through its gaps (without blocks a gap starts a new request).
- `sentinels = "sunspec"`: 0xFFFF, 0x8000, 0xFFFFFFFF ... read as missing (f32 NaN always is).
- `refuses_partial_writes = true`: the device answers a write to half of a multi-register value with exception 02
  (the simulator does too; the driver always writes whole values, so this documents the device).
- `[model.connector]` with `rows = [100, 199]`, `stride = 100`, `count = 8`: one object per connector; an asset
  with `connector = N` reads and writes connector 1's rows (and blocks) moved by (N − 1) × stride.

`[[registers]]` rows:
- `function = 4` (input register) or `3`; `type = "bit"` with `function = 1` (coil) or `2` (discrete input): one
  bit, 0/1; a coil may be `access = "rw"` or `"w"` and is written with 05 (`write_function = 15` for 15).
- `unit_id = 100`: the row lives on another unit id of the same device (SMA, Victron); a request never mixes units.
- `type = "u64"`, `"s64"`, or `"string"` with `length = 10` (ASCII, two characters a register).
- `bits = [2, 2]`: a bit range of a u16/u32 register (bit 0 = LSB).
- `scale = 0.1`, `offset = -40`, `scale_factor = 40087` (an s16 row): (raw × scale × 10^SF + offset).
- `percent_of = "max_charge_w"` with `unit = "%"`: a percentage of another row.
- `negate_if = "discharging"`: a magnitude, negative while that row reads non-zero.
- `missing = [0]`: raw values meaning "no value"; `minimum = 0.0`: a floor after conversion.
- on the status row, `enum = { "11" = "discharging" }` and `ev_connected_codes = [1, 11]`: device codes → the
  agent's states; a code the enum does not list makes the asset not operable.

`[control]`:
- `on_connect = [{ row = "control_mode", value = 1 }]` and `setpoint = [{ row = "action", value = { charge = 1,
  discharge = 1, idle = 2 } }, { row = "setpoint_w", value = "setpoint", delay_s = 0.5 }]`: ordered writes; a value
  is a constant, `setpoint`, `magnitude`, `charge`, `discharge` or `lease`.
- `min_charge_w = 1400`, `min_discharge_w`, `min_charge_row = "charge_floor_w"`: smaller requests are written as 0.
- `lease_max_s = 600`: the longest lease the device takes. A longer agent `lease_timeout_s` is written as this (the
  device reverts sooner than the agent assumes: the safe side) and the driver logs `asset.lease_clamped`; a maximum
  below the agent's refresh (2 × poll_period_s + poll_timeout_s) is an error (`drivers.registermap.lease_check`).
- `no_lease = "..."`: why a controllable device has no lease (the driver warns at every connect).

An asset chooses its link in `config.toml`: Modbus TCP (default); `framing = "rtu"` for RTU frames over TCP (a
serial gateway that does not convert to Modbus TCP); or serial RTU with `serial = "/dev/ttyUSB0"` and `baudrate`
(19200), `parity` ("N", "E", "O"), `stopbits` (1, 2), `bytesize` (7, 8), where `host`, `port` and `framing` do not
apply. For example:

```toml
[[assets]]
id = "ev1"
map = "evtec_bidipro10"
host = "192.0.2.10"
connector = 2          # connector 2's object at 200..299; the charge point's timeout at 42 is shared

[[assets]]
id = "meter"
map = "eastron_sdm630"
serial = "/dev/ttyUSB0"
baudrate = 9600
parity = "N"
unit_id = 1
```
"""


def _span(span: Span) -> str:
    what = "bits" if span.function in (1, 2) else "registers"
    unit = f" on unit {span.unit_id}" if span.unit_id is not None else ""
    return f"{span.count} {what} at PDU {span.address} (function {span.function}{unit})"


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
    if row.function is not None:
        notes.append(f"function {row.function}")
    if row.unit_id is not None:
        notes.append(f"unit {row.unit_id}")
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
        + ", ".join(_span(s) for s in register_map.spans)
        + f" ({len(register_map.spans)} request{'s' if len(register_map.spans) > 1 else ''} a poll)",
        "",
    ]
    if model.connector is not None:
        c = model.connector
        lines += [f"Connectors 1..{c.count}: rows at {c.rows[0]}..{c.rows[1]} are connector 1's; connector N's are "
                  f"{c.stride} × (N − 1) further (the asset's `connector` key)", ""]
    if model.refuses_partial_writes:
        lines += ["The device refuses a write to part of a multi-register value.", ""]
    if control.lease_max_s is not None:
        lines += [f"Longest lease the device takes: {control.lease_max_s:g} s (a longer one is written as this)", ""]
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


SUNSPEC_HEADER = """
# SunSpec product maps

Generated from `drivers/sunspec/products/*.toml`. A SunSpec device needs no register map: the driver finds the `SunS`
marker, walks the model chain and reads points by name (docs/sunspec.md). A product map says only where a product
departs from the standard sources: the fields it takes from other points, writes made at connect, vendor registers
outside the chain, the documented model order and the control model. Each is checked by a golden test
(`tests/golden/`) against words worked from its sources.
"""


def render_sunspec_product(product: ProductMap) -> str:
    info = product.product
    lines = [
        f"## {info.manufacturer} {info.name} (`{info.id}`)",
        "",
        f"Kind `{info.kind.value}` · product {info.product or '-'} · control through model {info.control}",
        "",
        f"Source: {info.source}",
        "",
        f"Documented model chain: {', '.join(map(str, info.models)) or 'not given'}",
        "",
    ]
    if product.fields:
        lines += ["| field | from (a leading - negates; terms add up) |", "|---|---|"]
        lines += [f"| {name} | {' + '.join(f'`{t}`' for t in terms)} |" for name, terms in product.fields.items()]
        lines.append("")
    if product.on_connect:
        lines.append("Written at connect: " + ", ".join(f"`{w.point} = {w.value}`" for w in product.on_connect))
        lines.append("")
    if product.extra:
        lines += ["| vendor register | address | type | scale | field |", "|---|---|---|---|---|"]
        lines += [f"| | {x.address} | {x.type} | {x.scale:g} | {x.field} |" for x in product.extra]
        lines.append("")
    return "\n".join(lines)


def render_all() -> str:
    modbus = "".join("\n" + render_map(load_map(map_id)) for map_id in available_maps())
    mqtt = "".join("\n" + render_mqtt_map(load_mqtt_map(map_id)) for map_id in available_mqtt_maps())
    sunspec = "".join(
        "\n" + render_sunspec_product(load_product(path)) for path in sorted(products_dir().glob("*.toml"))
    )
    return HEADER + modbus + MQTT_HEADER + mqtt + SUNSPEC_HEADER + sunspec


if __name__ == "__main__":
    sys.stdout.write(render_all())
