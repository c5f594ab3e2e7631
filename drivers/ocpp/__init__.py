"""OCPP 2.1: the agent as a charging station management system (CSMS); each EVSE of a station is an asset.

    codec.py    OCPP fields <-> domain values: the one place units, multipliers and signs are converted
    session.py  one station's WebSocket session: OCPP-J framing, CALLERRORs, the messages a station sends
    evse.py     OcppEvseDriver: one EVSE behind agent.ports.Driver, like a Modbus charger
    csms.py     the WebSocket server: TLS, HTTP Basic / client certificates, subprotocol, sessions by station

Needs the `ocpp` extra (ocpp, websockets); only drivers/factory.py imports this package, and only when a config
has OCPP assets or `[ocpp] enabled` (docs/ocpp.md).
"""
