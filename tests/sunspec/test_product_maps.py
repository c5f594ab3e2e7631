"""Product maps: a vendor register outside the chain ([[extra]], e.g. Fermata FE-20's SoC at 41104), replaced
field sources, and clear errors for a malformed map."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from sunspeckit import HOST, free_port

from agent.model import AssetKind
from drivers.modbus import GatewayPool
from drivers.sunspec.driver import SunSpecDriver
from drivers.sunspec.profile import ProfileError, load_product

FE20_LIKE = """schema = 1
[product]
id = "fe20_like"
manufacturer = "Test"
name = "V2G charger with a custom SoC register"
kind = "ev_charger"
source = "tests/sunspec/test_product_maps.py (made-up words)"
control = "none"
[[extra]]
field = "soc"
address = 41104
type = "uint16"
scale = 0.0001
"""


async def test_extra_register_feeds_a_field(tmp_path: Path) -> None:
    product = tmp_path / "fe20_like.toml"
    product.write_text(FE20_LIKE)
    # SunS, model 1 (L = 66, all zero), model 701 (L = 153) with W = -3700 W (absorbing) and W_SF = 0, end
    chain = [0x5375, 0x6E53, 1, 66, *[0] * 66, 701, 153, *[0] * 153, 0xFFFF, 0]
    w_at = 2 + 68 + 10  # 701's W is register 10 of the model (ID, L, ACType, St, InvSt, ConnSt, Alrm x2, DERMode x2)
    chain[w_at] = 0x10000 - 3700
    device = SimDevice(id=1, simdata=[
        SimData(address=40000, values=chain, datatype=DataType.REGISTERS),
        SimData(address=41104, values=[6543], datatype=DataType.REGISTERS),
    ])
    port = free_port()
    server = ModbusTcpServer([device], address=(HOST, port))
    await server.serve_forever(background=True)
    pool = GatewayPool(timeout_s=2.0)
    try:
        driver = SunSpecDriver("fe20", pool.get(HOST, port), 1, AssetKind.EV_CHARGER, product=load_product(product))
        m = await driver.read()
    finally:
        pool.close()
        await server.shutdown()
    assert m.power_w == pytest.approx(3700.0)  # absorbing = charging the EV: positive for the agent
    assert m.soc == pytest.approx(0.6543)


@pytest.mark.parametrize(("change", "message"), [
    (('kind = "ev_charger"', 'kind = "car"'), "product.kind"),
    (('field = "soc"', 'field = "sox"'), "not a domain field"),
    (('schema = 1', 'schema = 2'), "schema 2 is not supported"),
    (('control = "none"', 'control = "705"'), "product.control"),
    (('[[extra]]', '[fields]\npower_w = ["W"]\n[[extra]]'), "not a term"),
])
def test_malformed_maps_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(FE20_LIKE.replace(*change))
    with pytest.raises(ProfileError, match=message) as caught:
        load_product(path)
    assert str(path) in str(caught.value)


def test_unknown_product_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="fronius_gen24"):
        load_product("no_such_product")
