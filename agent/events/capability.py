"""Can the fleet deliver it? Checked before an event or award is accepted, against the live envelope.

A product is only worth accepting if the fleet can hold the power for the product's whole sustain time
(REFERENCE.md: FCR 5 min, S-FRR/FRR/S-RR/RR 30 min); an up-DR event must be absorbable for its whole window.
The answer names the shortfall in W or kWh, so the operator knows by how much to cut the offer.
"""

from __future__ import annotations

from agent.fleet import Envelope
from agent.products import PRODUCTS
from agent.signals.models import AsAward, UpDrEvent


def capability_shortfall(envelope: Envelope, signal: UpDrEvent | AsAward) -> str | None:
    """None when the envelope can sustain the request, else a sentence saying what falls short and by how much."""
    absorb_wh = _energy(envelope.absorb_w, envelope.absorb_for_s)
    deliver_wh = _energy(envelope.deliver_w, envelope.deliver_for_s)
    problems: list[str] = []
    if isinstance(signal, UpDrEvent):
        hours = (signal.end - signal.start).total_seconds() / 3600.0
        _check(problems, "absorb", signal.requested_increase_w, envelope.absorb_w, absorb_wh, hours)
    else:
        hours = PRODUCTS[signal.product].sustain_s / 3600.0
        _check(problems, "deliver (up)", signal.up_w, envelope.deliver_w, deliver_wh, hours)
        _check(problems, "absorb (down)", signal.down_w, envelope.absorb_w, absorb_wh, hours)
    return "; ".join(problems) or None


def _energy(power_w: float, for_s: float) -> float:
    return float("inf") if for_s == float("inf") else power_w * for_s / 3600.0


def _check(problems: list[str], what: str, asked_w: float, can_w: float, can_wh: float, hours: float) -> None:
    if asked_w <= 0:
        return
    if asked_w > can_w:
        problems.append(f"can {what} {can_w / 1000:.1f} kW now, {(asked_w - can_w) / 1000:.1f} kW short")
    need_wh = asked_w * hours
    if need_wh > can_wh:
        problems.append(
            f"{what} for {hours:g} h needs {need_wh / 1000:.1f} kWh, the fleet holds {can_wh / 1000:.1f} kWh "
            f"({(need_wh - can_wh) / 1000:.1f} kWh short)"
        )
