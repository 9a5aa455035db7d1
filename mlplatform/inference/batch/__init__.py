"""Batch inference: Ray Data over an Iceberg snapshot, exactly-once by checkpointed units."""
