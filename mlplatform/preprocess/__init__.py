"""Preprocessing: the Flink job (validate, normalise, quarantine), batch and stream."""
