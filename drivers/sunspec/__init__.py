"""SunSpec devices (docs/sunspec.md): discovery of the model chain, points by name with shared scale factors,
control through model 704 or 124 with their revert timers as the lease.

Imported only when a SunSpec asset is configured (agent/wiring.py, through the transport registry); pysunspec2 is
loaded only then.
"""
