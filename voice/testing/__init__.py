"""Tooling apart from the product: tiny FunASR models, the ASR capacity benchmark and shared test doubles."""
