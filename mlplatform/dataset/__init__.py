"""Datasets by configuration: the spec format (spec.py) and the bundled specs (specs/)."""
