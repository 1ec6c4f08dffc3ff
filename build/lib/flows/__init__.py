"""Prefect flows: the runbooks (install, backup verification, DR drills, ...).

They order and gate work and write reports; no SQL and no SDK calls here (those live in pcdb/,
called through tasks/). The install runbook arrives with its issue.
"""
