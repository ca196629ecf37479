"""One phone call, whatever the line: the transport seam, the dialogue, the runner that composes them, and the turn log."""
