"""Concrete SMS gateways; only telephony.app names them."""
