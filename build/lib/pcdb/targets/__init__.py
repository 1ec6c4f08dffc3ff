"""Targets: the one object every runbook talks to (Azure or the local sandbox)."""
