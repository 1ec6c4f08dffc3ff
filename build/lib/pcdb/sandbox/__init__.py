"""The local sandbox: real PostgreSQL servers on loopback that mirror the production topology."""

from pcdb.sandbox.engine import Sandbox, default_root

__all__ = ["Sandbox", "default_root"]
