"""A reserve offer (`as_offer`) end to end on a simulated site: taken through the same entry the MQTT link and
`--signals` use (SignalIngest.receive), acknowledged, refused with the key named when bad, stored across a restart,
and planned: the optimiser holds capacity for it that nothing awarded.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sitekit import eventually
from test_events import payload
from test_events import running as agent

from agent.dispatch.build import step_start


async def test_an_offer_is_taken_planned_as_a_bid_and_kept_across_a_restart(tmp_path: Path) -> None:
    async with agent(tmp_path, mode="dispatch") as (site, app):
        assert app.dispatcher is not None
        await eventually(lambda: app.dispatcher.plan is not None, what="first plan")
        assert not app.dispatcher.plan.reserve_up_w.any()  # nothing offered, nothing awarded: nothing held
        step_s = app.config.dispatch.step_s
        start = step_start(site.clock.now(), step_s)
        offer = {"id": "o1", "product": "FRR", "start": start, "interval_s": round(step_s),
                 "capacity_price_per_kw_h": [50.0] * 8, "directions": "up"}  # fmt: skip
        assert (await app.ingest.receive("as_offer", payload(**offer))).status == "accepted"
        assert (await app.ingest.receive("as_offer", payload(**offer))).status == "duplicate"
        bad = await app.ingest.receive("as_offer", payload(**{**offer, "id": "o2", "product": "RegD"}))
        assert bad.status == "rejected" and "directions 'up': RegD is one band" in (bad.reason or "")
        assert set(app.ingest.book["as_offer"]) == {"o1"}
        assert app.events.events == {}  # an offer is no event: nothing to deliver until an award
        solves = app.dispatcher.solves
        # app.py re-plans at once on an accepted offer, as on prices, events and awards
        await eventually(lambda: app.dispatcher.solves > solves, what="a plan with the offer")
        plan = app.dispatcher.plan
        assert plan is not None
        # capacity held up for the offer's price in the steps it covers (which ones is the planner's choice: the
        # burning re-solve, planner._forbid_burning, can leave an idle step's up headroom unused)
        assert plan.reserve_up_w[:, :8].sum(axis=0).max() > 1_000
        assert not plan.reserve_down_w.any()  # only up was offered
    async with agent(tmp_path, mode="dispatch") as (_, app):  # stored before its ack: back after a restart
        assert set(app.ingest.book["as_offer"]) == {"o1"}
        assert app.ingest.book["as_offer"]["o1"].ends_at() == start + timedelta(seconds=8 * step_s)
