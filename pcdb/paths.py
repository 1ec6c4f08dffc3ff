"""Where pcdb's files are.

Package data, read through importlib.resources so that a wheel install works as well as a
checkout: the SQL (``pcdb/sql/``), the shipped environment specs (``pcdb/deployments/``, also
reachable as ``deployments/`` in a checkout) and the deployments file (``pcdb/prefect.yaml``).

The project folder, against which relative ``reports_dir`` paths resolve: the checkout when pcdb
runs from one, else ``$PCDB_PROJECT``, else the current directory.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

PACKAGE = Path(str(files("pcdb")))
DEPLOYMENTS = PACKAGE / "deployments"
PREFECT_FILE = PACKAGE / "prefect.yaml"
# The root CAs Azure Database for PostgreSQL certificates chain to (its "Recommended configurations
# for TLS"): verify-full against them when the spec does not name its own bundle.
AZURE_ROOTS = PACKAGE / "data" / "azure-postgresql-roots.pem"


def project_root() -> Path:
    """The checkout pcdb runs from (its pyproject.toml beside the package), else $PCDB_PROJECT,
    else the current directory."""
    checkout = PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "pcdb").resolve() == PACKAGE.resolve():
        return checkout
    return Path(os.environ.get("PCDB_PROJECT") or Path.cwd())
