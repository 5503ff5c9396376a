"""Repositories: the named ``select()`` statements of the service; no other module writes SQL."""
