"""The ``pcdb`` command: the front door to the runbooks and the local sandbox.

A layer of its own above the flows: it parses what a person typed, points Prefect at the
environment's server, runs a flow and prints its result. User errors (bad spec, missing
binaries, a server that will not start) print one clear message and exit 1; they never show a
traceback. ``from cli.main import app`` is the Typer app; ``python -m cli`` runs it.
"""
