"""Prefect tasks: thin wrappers, one side effect each, with retries for transient failures only.

Each task calls pcdb/ with clients and connections passed in (no Block.load in a task body).
"""
