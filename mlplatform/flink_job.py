"""The PyFlink preprocessing job. It runs in the Flink environment (.venv-flink), so it imports
only pyflink and the standard library; its configuration arrives as one JSON file.

Reads raw CSV lines from a folder, validates each line with SQL generated from the dataset spec,
and in one Flink job writes valid rows to the Iceberg features table and the Pulsar features topic,
and invalid rows, with the reason, to the Iceberg quarantine table.

Usage: python flink_job.py CONFIG_JSON   (prints a JSON line {"job_id": ..., "status": "SUBMITTED"}
once submitted, and a last one with "status": "FINISHED"). With "rest_url" in the config the job
goes to that Flink session cluster; without, it runs on a local mini-cluster in this process.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlparse


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _options(options: dict[str, str]) -> str:
    return ", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


def validation_sql(cfg: dict[str, Any]) -> str:
    """A view over raw lines: the parsed columns and a reason (NULL when the row is valid)."""
    key, label, features = cfg["key_column"], cfg["label_column"], cfg["feature_columns"]
    n_fields = len(features) + 2
    lo, hi = float(cfg["feature_min"]), float(cfg["feature_max"])
    n_labels = len(cfg["label_names"])
    field_count = "CHAR_LENGTH(line) - CHAR_LENGTH(REPLACE(line, ',', '')) + 1"
    parsed = [f"TRIM(SPLIT_INDEX(line, ',', 0)) AS `{key}`"]
    parsed += [
        f"TRY_CAST(TRIM(SPLIT_INDEX(line, ',', {i})) AS DOUBLE) AS `{c}`"
        for i, c in enumerate(features, start=1)
    ]
    parsed.append(f"TRY_CAST(TRIM(SPLIT_INDEX(line, ',', {n_fields - 1})) AS INT) AS `{label}`")
    checks = [f"WHEN {field_count} <> {n_fields} THEN 'wrong_field_count'"]
    checks.append(f"WHEN `{key}` IS NULL OR `{key}` = '' THEN 'missing_key:{key}'")
    checks += [f"WHEN `{c}` IS NULL THEN 'not_a_number:{c}'" for c in features]
    # NaN and infinity fail both comparisons, so they are caught as out of range too.
    checks += [
        f"WHEN NOT (`{c}` >= {lo!r} AND `{c}` <= {hi!r}) THEN 'out_of_range:{c}'" for c in features
    ]
    checks.append(
        f"WHEN `{label}` IS NULL OR `{label}` < 0 OR `{label}` >= {n_labels} THEN 'bad_label'"
    )
    reason = "CASE " + " ".join(checks) + " ELSE CAST(NULL AS STRING) END"
    return (
        f"SELECT line, source, *, {reason} AS reason FROM ("
        f"SELECT line, `file.path` AS source, {', '.join(parsed)} FROM raw_lines "
        f"WHERE line <> {_quote(cfg['header'])})"
    )


MESSAGE_KEY = "_message_key"
TOKEN_AUTH_PLUGIN = "org.apache.pulsar.client.impl.auth.AuthenticationToken"


def pulsar_auth_options(cfg: dict[str, Any]) -> dict[str, str]:
    """The connector's client authentication: a token read from a file, never inlined."""
    token_file = cfg.get("pulsar_token_file")
    if not token_file:
        return {}
    return {
        "pulsar.client.authPluginClassName": TOKEN_AUTH_PLUGIN,
        "pulsar.client.authParams": f"file://{token_file}",
    }


def build_statements(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """DDL to run first, then the INSERTs that make up the job."""
    key, label, features = cfg["key_column"], cfg["label_column"], cfg["feature_columns"]
    catalog, ns = cfg["catalog_name"], cfg["namespace"]
    typed = ", ".join([f"`{key}` STRING"] + [f"`{c}` DOUBLE" for c in features])
    files = {"connector": "filesystem", "path": cfg["input_path"], "format": "raw"}
    ddl = [
        f"CREATE CATALOG `{catalog}` WITH ({_options(cfg['iceberg_catalog_options'])})",
        "CREATE TEMPORARY TABLE raw_lines (line STRING, `file.path` STRING NOT NULL METADATA) "
        f"WITH ({_options(files)})",
        # The message key is a copy of the row key (key fields leave the value): Key_Shared
        # subscribers hash it, and the topic's partitions are chosen by it.
        f"CREATE TEMPORARY TABLE features_topic (`{MESSAGE_KEY}` STRING, {typed}, `{label}` INT) "
        "WITH ("
        + _options(
            {
                "connector": "pulsar",
                "topics": cfg["features_topic"],
                "service-url": cfg["pulsar_service_url"],
                "format": "json",
                "key.format": "raw",
                "key.fields": MESSAGE_KEY,
                "sink.topic-routing-mode": "message-key-hash",
                **pulsar_auth_options(cfg),
            }
        )
        + ")",
        f"CREATE TEMPORARY VIEW checked AS {validation_sql(cfg)}",
    ]
    columns = ", ".join([f"`{key}`"] + [f"`{c}`" for c in features] + [f"`{label}`"])
    now = "CAST(LOCALTIMESTAMP AS TIMESTAMP(6))"
    inserts = [
        f"INSERT INTO `{catalog}`.`{ns}`.`{cfg['features_table']}` "
        f"SELECT {columns}, {now} FROM checked WHERE reason IS NULL",
        f"INSERT INTO features_topic SELECT `{key}`, {columns} FROM checked WHERE reason IS NULL",
        f"INSERT INTO `{catalog}`.`{ns}`.`{cfg['quarantine_table']}` "
        f"SELECT COALESCE(line, ''), reason, source, {now} FROM checked WHERE reason IS NOT NULL",
    ]
    return ddl, inserts


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    target = Configuration()
    if cfg.get("rest_url"):
        # Submit to a session cluster instead of starting a mini-cluster in this process.
        url = urlparse(cfg["rest_url"])
        target.set_string("execution.target", "remote")
        target.set_string("rest.address", url.hostname or "127.0.0.1")
        target.set_string("rest.port", str(url.port or 8081))
    settings = EnvironmentSettings.new_instance().in_batch_mode().with_configuration(target)
    env = TableEnvironment.create(settings.build())
    conf = env.get_config()
    conf.set("parallelism.default", str(cfg["parallelism"]))
    conf.set("python.executable", cfg["python_executable"])
    conf.set("pipeline.name", cfg["job_name"])
    ddl, inserts = build_statements(cfg)
    for statement in ddl:
        env.execute_sql(statement)
    statement_set = env.create_statement_set()
    for statement in inserts:
        statement_set.add_insert_sql(statement)
    result = statement_set.execute()
    job_client = result.get_job_client()
    job_id = str(job_client.get_job_id()) if job_client else ""
    # Known before the job ends, so a failure can be looked up by id (the cluster's REST API).
    print(json.dumps({"job_id": job_id, "status": "SUBMITTED"}), flush=True)
    result.wait()
    return {"job_id": job_id, "status": "FINISHED"}


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        config = json.load(handle)
    print(json.dumps(run(config)), flush=True)
