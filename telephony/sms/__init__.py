"""SMS to the caller's phone: the full guide and its policy basis. Holds the gateway seam now; the composer, the
persistent outbox and its worker, and the gateways (SMPP, Kannel, cloud template APIs) come with the SMS issue."""
