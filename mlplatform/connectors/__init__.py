"""Adapters to the outside systems that every stage uses: Iceberg, Pulsar, Ray."""
