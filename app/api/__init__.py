"""The HTTP API: routers, dependencies, schemas and problem+json errors."""
