"""Closed-loop evaluation of the dispatcher against the simulator's physics (see agent.dispatch.evaluate).

One module per job: `scenario` (what the world does), `plant` (the physics the plan is applied to), `policies`
(what each strategy decides), `ledger` (what the physics actually earned and cost), `blast_score` (the optional
second opinion on capacity fade) and `report` (the table).
"""
