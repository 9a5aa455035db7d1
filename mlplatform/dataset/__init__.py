"""Datasets: the spec format, the bundled specs (specs/), demo and synthetic rows."""
