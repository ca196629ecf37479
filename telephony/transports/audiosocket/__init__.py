"""Asterisk AudioSocket: `protocol` is the wire format (pure), `server` the TCP line (`AudioSocketLine`, named only
in the composition root) whose connections become `AudioSocketTransport`s run by the `CallRunner`. A sample
dialplan is in `deploy/asterisk/`."""
