"""HTTP routers of the Console API, all under ``/api/v1``."""
