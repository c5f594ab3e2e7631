"""OCPP 2.1 and 2.0.1: the agent as a charging station management system (CSMS); each EVSE of a station is an
asset (2.0.1 ones charge-only).

    codec.py    OCPP fields <-> domain values: the one place units, multipliers and signs are converted
    session.py  one station's WebSocket session: OCPP-J framing, CALLERRORs, the messages a station sends
    evse.py     OcppEvseDriver: one EVSE behind agent.ports.Driver, like a Modbus charger
    csms.py     the WebSocket server: TLS, HTTP Basic / client certificates, subprotocol, sessions by station
    txlog.py    a transaction's energy registers in seqNo order, offline-queued events included

Needs the `ocpp` extra (ocpp, websockets); only agent/wiring.py imports this package, and only when a config
has OCPP assets or `[ocpp] enabled` (docs/ocpp.md). csms.py takes its settings as the CsmsSettings protocol, which
agent.config.OcppSettings satisfies, so nothing here imports the agent's config.
"""
