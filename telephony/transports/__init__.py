"""Phone lines: each adapts one wire (the Twilio-compatible media stream; SIP and Asterisk AudioSocket next) to the
`CallTransport` seam in `telephony.calls.base`. Wire formats are pure modules beside thin socket adapters."""
