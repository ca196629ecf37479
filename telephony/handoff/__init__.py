"""Handing a caller to people: where a handoff goes (`HandoffTarget`), the after-hours callback ticket, and later the
agent queue and warm transfer."""
