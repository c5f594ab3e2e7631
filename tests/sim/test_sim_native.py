"""The simulator serves real products' maps with the device's own codes and sign (issue 12 §3), word by word.

These words are worked by hand from the same documented tables as tests/golden (which check the driver), so the
simulator's inversion of the map (sim_devices/registers.py, its own code) is checked without the driver.
"""

from __future__ import annotations

import struct

from sim_devices.maps import load_map
from sim_devices.registers import DeviceCodec

DISCHARGING_EV = {
    "status": 2, "ev_connected": 1, "power_w": -2500.0, "soc": 0.655, "fault_code": 0x2_0000_0001,
    "max_charge_w": 10_000.0, "max_discharge_w": 7_000.0, "setpoint_w": -2500.0, "rated_charge_w": 7400.0,
}


def _f32(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def test_quasar_serves_its_own_state_codes() -> None:
    codec = DeviceCodec(load_map("wallbox_quasar"))
    holding = codec.images(DISCHARGING_EV)[None, 3]
    assert holding[537] == [11]  # 11 = discharging (the agent's code is 2)
    assert holding[526] == [(-2500) & 0xFFFF]
    assert holding[538] == [66]  # 65.5 % rounds to 66
    assert holding[539] == [0x0000, 0x0002, 0x0000, 0x0001]  # u64, 539 most significant
    standby = codec.images({**DISCHARGING_EV, "status": 0, "power_w": 0.0})[None, 3]
    assert standby[537] == [2]  # standby with a car: "waiting for car demand", a connected code
    unplugged = codec.images({**DISCHARGING_EV, "status": 4, "ev_connected": 0})[None, 3]
    assert unplugged[537] == [0]


def test_evtec_serves_connector_states_and_the_inverted_discharge_limit() -> None:
    codec = DeviceCodec(load_map("evtec_bidipro10"))
    holding = codec.images(DISCHARGING_EV)[None, 3]
    assert holding[100] == [0, 8]  # s32 state 8 = discharging
    assert holding[110] == _f32(-2500.0)
    assert holding[112] == [0, 655]  # per-mille
    assert holding[122] == _f32(-7000.0)  # "lower limit potential" is negative when V2G is offered
    assert holding[176] == [0] * 10  # no car id known: NUL string
    idle = codec.images({**DISCHARGING_EV, "status": 0})[None, 3]
    assert idle[100] == [0, 9]  # standby with a car plugged: 9 (session stopped), a connected code


def test_sungrow_serves_a_magnitude_and_the_running_state_bit_in_input_registers() -> None:
    codec = DeviceCodec(load_map("sungrow_sh"))
    images = codec.images({"power_w": -2500.0, "soc": 0.655})
    assert (None, 3) not in images or 13021 not in images[None, 3]  # readings live in the input table
    inputs = images[None, 4]
    assert inputs[13000] == [0b100]  # register 13001 bit 2: discharging
    assert inputs[13021] == [2500]  # register 13022: magnitude
    assert inputs[13022] == [655]
    assert codec.images({"power_w": 1200.0, "soc": 0.5})[None, 4][13000] == [0]


def test_sungrow_command_sequence_becomes_one_setpoint() -> None:
    codec = DeviceCodec(load_map("sungrow_sh"))
    regs = [0] * 10

    def write(address: int, value: int) -> dict[str, float]:
        return codec.decode_write(regs, 13049, address, [value])

    assert write(13049, 2) == {}  # EMS forced mode: a constant, no setpoint yet
    write(13050, 0xBB)
    assert write(13051, 3000) == {"setpoint_w": -3000.0}
    assert write(13050, 0xAA) == {"setpoint_w": 3000.0}  # the held power, now charging
    assert write(13050, 0xCC) == {"setpoint_w": 0.0}  # stop


def test_quasar_start_stop_action_and_setpoint() -> None:
    codec = DeviceCodec(load_map("wallbox_quasar"))
    regs = [0] * 10
    codec.decode_write(regs, 257, 257, [1])
    assert codec.decode_write(regs, 257, 260, [(-2500) & 0xFFFF]) == {"setpoint_w": -2500.0}
    assert codec.decode_write(regs, 257, 257, [2]) == {"setpoint_w": 0.0}  # stop
    assert codec.decode_write(regs, 88, 88, [45]) == {"lease_timeout_s": 45.0}
