"""Write the JSON Schema of every MQTT payload the agent sends or takes to docs/schemas/.

Run `python -m agent.schemas` (from the repository root); a test fails when a committed schema differs, so the
documented contract cannot drift from the code that enforces it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from agent.signals.models import SIGNAL_TYPES, Ack
from agent.status import AgentStatus
from agent.telemetry import ENVELOPE_JSON, MEASUREMENT_JSON, STATUS_JSON

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def all_schemas() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {
        f"signal-{kind}.json": model.model_json_schema() for kind, model in SIGNAL_TYPES.items()
    }
    schemas["signal-ack.json"] = Ack.model_json_schema()
    schemas["measurement.json"] = MEASUREMENT_JSON.json_schema()
    schemas["asset-status.json"] = STATUS_JSON.json_schema()
    schemas["envelope.json"] = ENVELOPE_JSON.json_schema()
    schemas["agent-status.json"] = AgentStatus.model_json_schema()
    return schemas


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for name, schema in all_schemas().items():
        (SCHEMA_DIR / name).write_text(render(schema), encoding="utf-8")
    sys.stdout.write(f"wrote {len(all_schemas())} schemas to {SCHEMA_DIR}\n")


if __name__ == "__main__":
    main()
