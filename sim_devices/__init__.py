"""Simulated VPP devices (V2G chargers, batteries, DC meters) and the Modbus TCP servers that expose them.

Physics (`ev_charger`, `battery`, `meter`, `site`) is pure Python; `registers` and `server` put it on the wire
using the register maps in drivers/maps as data only; `runner.SimSite` runs a configured site; `cli` is `vpp-sim`.
"""
