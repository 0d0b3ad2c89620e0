"""Reading a whole SSE response body in tests: fields until a blank line make one event."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["sse_events"]


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, decoded JSON data) of every event with data; comments and ids are skipped."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "message", []
    for line in [*body.splitlines(), ""]:
        if not line:
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events
