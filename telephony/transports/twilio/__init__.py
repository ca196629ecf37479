"""The Twilio-compatible Media Streams websocket: `protocol` is the wire format, `gateway` the adapter to
`CallTransport` (the browser softphone speaks the same protocol)."""
