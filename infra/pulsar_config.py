"""Write the Pulsar standalone config: the distribution's template plus our overrides."""

from __future__ import annotations

from mlplatform.settings import Settings


def standalone_overrides(s: Settings) -> dict[str, str]:
    """Settings that keep the broker small, local and safe for replays."""
    return {
        "bindAddress": "127.0.0.1",
        "advertisedAddress": "127.0.0.1",
        "brokerServicePort": str(s.pulsar_broker_port),
        "webServicePort": str(s.pulsar_web_port),
        "managedLedgerDefaultEnsembleSize": "1",
        "managedLedgerDefaultWriteQuorum": "1",
        "managedLedgerDefaultAckQuorum": "1",
        # Producers that set a name and sequence ids get broker-side de-duplication.
        "brokerDeduplicationEnabled": "true",
        "functionsWorkerEnabled": "false",
        # The default deletes topics without subscriptions after 60 s idle, backlog and all.
        "brokerDeleteInactiveTopicsEnabled": "false",
        "allowAutoTopicCreation": "true",
        "allowAutoTopicCreationType": "non-partitioned",
        # The bookie reads this file too: keep it on loopback.
        "listeningInterface": "lo",
        "allowLoopback": "true",
        "dbStorage_writeCacheMaxSizeMb": "64",
        "dbStorage_readAheadCacheMaxSizeMb": "64",
        "dbStorage_rocksDB_blockCacheSize": "16777216",
    }


def write_standalone_conf(s: Settings) -> None:
    template = (s.pulsar_home / "conf" / "standalone.conf").read_text().splitlines()
    overrides = standalone_overrides(s)
    seen: set[str] = set()
    lines = []
    for line in template:
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            lines.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    target = s.state_dir / "pulsar" / "standalone.conf"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
