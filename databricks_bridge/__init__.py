"""Exports finished fitfed jobs to MLflow and Unity Catalog (not yet implemented; see docs/)."""
