"""pcdb: the Product-Change database runbooks, plain-Python core (no Prefect here)."""

__version__ = "0.1.0"
