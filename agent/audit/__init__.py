"""The append-only audit trail (docs/audit.md): what the agent took and decided, chained by hashes, its head signed.

chain.py   the one definition of a row's canonical bytes and hash, and the checks `vpp-agent audit verify` runs
trail.py   what the running agent records, batched off the event loop, with bounded refusal samples and counts
cli.py     `vpp-agent audit verify` and `vpp-agent audit show`
"""
