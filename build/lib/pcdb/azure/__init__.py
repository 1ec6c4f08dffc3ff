"""The Azure side: the production resources of the installation plan as Azure SDK models."""
