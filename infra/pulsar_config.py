"""Write the Pulsar standalone config: the distribution's template plus our overrides.

With `pulsar_functions_worker` the broker also runs Pulsar's own functions worker; its config
(functions_worker.yml, the template plus our overrides) keeps every path under the state and log
folders. Its process runtime starts Python instances with `python3` from the broker's PATH:
services.py puts the functions environment (FUNCTIONS_VENV, infra/functions/requirements.lock)
first on that PATH.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mlplatform.settings import PROJECT_DIR, Settings

FUNCTIONS_VENV = PROJECT_DIR / ".venv-functions"


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
        # A failover subscription's new active consumer is served at once, not after the
        # default 1 s left for the old one's acknowledgements: a spare stream actor takes a lost
        # one's partitions in well under a second, and the actors de-duplicate what a switch
        # repeats (measured: the 1 s was most of the gap after a kill).
        "activeConsumerFailoverDelayTimeMillis": "0",
        # Transactions: the Flink stream job's Pulsar sinks publish in one per checkpoint, so
        # what a failed task published after its last checkpoint never becomes visible.
        # Standalone mode creates the coordinator's metadata on its first start.
        "transactionCoordinatorEnabled": "true",
        # With transactions on, a topic being loaded first reads its transaction buffer snapshot
        # through the broker's own client, and does not dispatch until it has. That read hangs
        # now and then (Pulsar 4.0.8: "Transaction buffer failed to recover snapshot" after a
        # TimeoutException in TableView.readLatest); the broker then closes the topic and loads
        # it again, which works. The client's 30 s operation timeout was a 30 s stall for the
        # topic's consumers (11 times in a day of tests here); this bounds it at 5 s.
        "brokerClient_operationTimeoutMs": "5000",
        "functionsWorkerEnabled": str(s.pulsar_functions_worker).lower(),
        # Function packages (the standalone worker stores them on the filesystem); the default
        # is relative to the distribution's folder.
        "STORAGE_PATH": str(s.state_dir / "pulsar" / "packages"),
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


TOKEN_PROVIDER = "org.apache.pulsar.broker.authentication.AuthenticationProviderToken"
TOKEN_CLIENT_PLUGIN = "org.apache.pulsar.client.impl.auth.AuthenticationToken"


def secret_key_file(s: Settings) -> Path:
    return s.pulsar_auth_dir / "secret.key"


def auth_overrides(s: Settings) -> dict[str, str]:
    """Token authentication and authorization; the broker's own clients use the admin token.

    Only file:// paths go into the config, never a key or a token. Off: the template's defaults
    (both disabled).
    """
    if not s.pulsar_auth:
        return {}
    return {
        "authenticationEnabled": "true",
        "authorizationEnabled": "true",
        "authenticationProviders": TOKEN_PROVIDER,
        "tokenSecretKey": f"file://{secret_key_file(s)}",
        "superUserRoles": s.pulsar_auth_admin_role,
        "brokerClientAuthenticationPlugin": TOKEN_CLIENT_PLUGIN,
        "brokerClientAuthenticationParameters": (
            f"file://{s.pulsar_role_token_file(s.pulsar_auth_admin_role)}"
        ),
    }


def write_standalone_conf(s: Settings) -> None:
    template = (s.pulsar_home / "conf" / "standalone.conf").read_text().splitlines()
    overrides = {**standalone_overrides(s), **auth_overrides(s)}
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


def functions_worker_conf(s: Settings) -> Path:
    return s.state_dir / "pulsar" / "functions_worker.yml"


def write_functions_worker_conf(s: Settings) -> None:
    """The worker talks to this broker, and keeps downloads and instance logs in our folders."""
    template = s.pulsar_home / "conf" / "functions_worker.yml"
    conf = yaml.safe_load(template.read_text())
    state = s.state_dir / "pulsar"
    conf.update(
        pulsarServiceUrl=s.pulsar_service_url,
        pulsarWebServiceUrl=s.pulsar_admin_url,
        workerHostname="127.0.0.1",
        workerPort=s.pulsar_web_port,
        downloadDirectory=str(state / "functions-download"),
        connectorsDirectory=str(state / "connectors"),
        functionsDirectory=str(state / "functions"),
    )
    conf["functionRuntimeFactoryConfigs"]["logDirectory"] = str(s.log_dir / "pulsar-functions")
    target = functions_worker_conf(s)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(conf, sort_keys=False))
