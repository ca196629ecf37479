"""Benchmark tooling (simulated callers, the turn-latency run, the known-transcript ASR): imported only by the CLI,
never by the product."""
