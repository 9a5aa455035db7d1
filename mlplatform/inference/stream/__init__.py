"""Stream inference: Ray actors on Pulsar, one Iceberg committer, Pulsar Functions."""
