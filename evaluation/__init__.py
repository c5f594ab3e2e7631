"""Closed-loop evaluation of the agent's dispatch strategies on the simulator's physics (see evaluation.evaluate).

Outside `agent/` on purpose: it imports both `agent` and `sim_devices`, and neither imports it (the `vpp-agent
simulate` command in the composition root, agent/cli.py, loads it lazily). One module per job: `scenario` (the
world), `plant` (the physics the plan is applied to), `agent_view` (the agent's fleet, inputs and SafetyEnvelope over
the plant), `policies` (the strategies), `ledger` (what the physics earned and cost), `scoring` (two degradation
models, one fade -> money rule), `report` (the tables) and `plots` (the figures, optional matplotlib).
"""
