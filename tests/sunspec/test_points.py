"""SunSpec point decoding from hand-written words: shared scale factors, "not implemented" values per type, layouts
from pysunspec2's definitions (offsets checked against the published model tables, not against our own encoder)."""

from __future__ import annotations

import pytest

from drivers.sunspec.device import DeviceMap
from drivers.sunspec.discovery import ModelEntry
from drivers.sunspec.models import SunSpecModelError, layout
from drivers.sunspec.points import PointError, encode, scaled
from drivers.sunspec.profile import DEFAULT_SOURCES, ProfileError, parse_term


def test_offsets_follow_the_published_tables() -> None:
    # model 124 (storage_basic): WChaMax is the first point after ID and L, ChaState the 7th, InOutWRte_SF the last
    m124 = layout(124)
    assert (m124.point("WChaMax").offset, m124.point("ChaState").offset, m124.point("InOutWRte_SF").offset) == (
        2, 8, 25)
    # model 160 with 4 modules (L = 88): module 3's DCW is register 61 of the model (Tinkerforge: 40315 - 40254)
    assert layout(160, 88).point("module[3].DCW").offset == 61
    # 714 with one port: the port follows ID, L and 18 fixed registers (PrtAlrms 2, NPrt, DCA, DCW, 2 x 4 Wh, 5 SFs)
    assert layout(714).point("Prt[1].PrtTyp").offset == 20


def test_shared_scale_factor_applies_with_its_sign() -> None:
    m701 = layout(701)
    words = [0] * (m701.length + 2)
    words[m701.point("W").offset] = 0xFF85  # -123
    words[m701.point("W_SF").offset] = 2  # ×100
    assert scaled(m701, "W", words) == -12_300.0
    words[m701.point("W_SF").offset] = 0xFFFE  # -2: ÷100
    assert scaled(m701, "W", words) == pytest.approx(-1.23)


@pytest.mark.parametrize(("point", "words"), [
    ("W", [0x8000]),  # int16
    ("InvSt", [0xFFFF]),  # enum16
    ("Alrm", [0xFFFF, 0xFFFF]),  # bitfield32
    ("TotWhInj", [0xFFFF] * 4),  # uint64
])
def test_not_implemented_values_read_as_missing(point: str, words: list[int]) -> None:
    m701 = layout(701)
    image = [0] * (m701.length + 2)
    p = m701.point(point)
    image[p.offset : p.offset + p.size] = words
    assert scaled(m701, point, image) is None


def test_a_point_whose_scale_factor_is_not_implemented_is_missing() -> None:
    m701 = layout(701)
    words = [0] * (m701.length + 2)
    words[m701.point("W").offset] = 100
    words[m701.point("W_SF").offset] = 0x8000
    assert scaled(m701, "W", words) is None


def test_scale_factor_outside_ten_is_an_error() -> None:
    m701 = layout(701)
    words = [0] * (m701.length + 2)
    words[m701.point("W_SF").offset] = 11
    with pytest.raises(PointError, match="outside"):
        scaled(m701, "W", words)


def test_encode_refuses_the_not_implemented_value_and_overflow() -> None:
    wset = layout(124).point("InWRte")
    assert encode(wset, -29.29, -2, toward_zero=True) == [0x10000 - 2929]
    with pytest.raises(PointError):
        encode(wset, -327.68, -2)  # raw -32768 is int16's "not implemented"


def test_sources_pick_the_first_model_the_device_has() -> None:
    chain = [ModelEntry(1, 40002, 66), ModelEntry(103, 40070, 50), ModelEntry(124, 40122, 24)]
    device = DeviceMap.build(40000, chain, DEFAULT_SOURCES)
    assert str(device.sources["power_w"][0]) == "-103.W"
    assert str(device.sources["soc"][0]) == "124.ChaState"
    assert "soh" not in device.sources


def test_terms_and_unknown_models_are_refused_clearly() -> None:
    assert parse_term("-160.module[4].DCW").sign == -1.0
    with pytest.raises(ProfileError, match="not a term"):
        parse_term("W")
    with pytest.raises(SunSpecModelError, match="not defined"):
        layout(64999)
