"""The contact centre: settings, storage, call handling, web API and command line (the composition root)."""
