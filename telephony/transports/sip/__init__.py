"""SIP: a user agent on pjsua2 (a PBX extension or a trunk's INVITEs) implementing `CallTransport`, with blind
(REFER) and attended transfer. Empty until the SIP issue: it plugs into `telephony.calls.runner.CallRunner` like the
media stream does, and reports its state through `telephony.transports.base.Line`."""
