"""Doubles of paid remote services (LLM API, edge-tts, an SMSC) speaking their real wire protocols on 127.0.0.1, for
the tests and the benchmarks (`hotline bench faults`). Tooling: the product never imports them."""
