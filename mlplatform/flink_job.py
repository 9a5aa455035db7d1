"""The PyFlink preprocessing job. It runs in the Flink environment (.venv-flink), so it imports
only pyflink and the standard library; its configuration arrives as one JSON file.

Reads raw CSV lines (as bytes) from a folder and classifies each with SQL generated from the
dataset spec. In one Flink job it writes the valid rows to the Iceberg features table and the
Pulsar features topic, the rejected rows (raw payload, reason, source, time) to the Iceberg
quarantine table and the Pulsar quarantine topic, and a count per outcome to a small JSON file
(`counts_path`) that the caller reads back. Bad data never fails the job: every line gets an
outcome.

Reasons, the first failed check in this order: empty_payload, oversized_payload (more than
max_line_bytes bytes), not_utf8, missing_fields / extra_fields (the wrong number of fields),
missing_key:<key>, missing_value:<col>, not_a_number:<col>, not_finite:<col> (NaN, infinity),
out_of_range:<col>, not_an_integer:<label>, out_of_range:<label>; then, among rows that pass
all of them, duplicate_key (the same event id again in this input).

Exactly-once for replays. A valid row whose event id is already in the Iceberg features table
(read in this same job, at its start) is not written again, to either sink, and is counted as
already_ingested; it is not quarantined, because nothing is wrong with it and its data is
already in the lake. Among new valid rows with the same event id, one is written and the
others are quarantined as duplicate_key: the one from the earliest file (modification time, then
path) and, within it, the smallest line, so the choice is deterministic (Flink's raw line source
gives no line numbers). Replaying a file, whole or in part, therefore adds nothing to the
features table or topic; its bad rows are quarantined again, once per run, with that run's time.
Limits:
- runs must not overlap: two jobs started before either commits both see a key as new (the
  preprocess deployment has concurrency_limit 1);
- the two sinks are not one transaction: Iceberg commits at the end of the job, the Pulsar sink
  publishes as it goes (no Pulsar transactions), so a job that fails after publishing and before
  the Iceberg commit leaves rows on the topic that Iceberg lacks, and its retry publishes them
  again (at least once on the topic in that window; Iceberg stays exact);
- the check reads every event id of the features table, a cost that grows with the table.

Usage: python flink_job.py CONFIG_JSON   (prints a JSON line {"job_id": ..., "status": "SUBMITTED"}
once submitted, and a last one with "status": "FINISHED"). With "rest_url" in the config the job
goes to that Flink session cluster; without, it runs on a local mini-cluster in this process.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlparse

ALREADY_INGESTED = "already_ingested"
DUPLICATE_KEY = "duplicate_key"
OVERSIZED = "oversized_payload"
WRITTEN = "written"  # the outcome of a row that reached both feature sinks
# A double cast to text reads one of these when it is not finite.
NOT_FINITE_TEXT = ("NaN", "Infinity", "-Infinity")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _options(options: dict[str, str]) -> str:
    return ", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


def _field(i: int) -> str:
    return f"TRIM(SPLIT_INDEX(line, ',', {i}))"


def feature_names(cfg: dict[str, Any]) -> list[str]:
    return [f["name"] for f in cfg["features"]]


def _sql_type(feature: dict[str, Any]) -> str:
    return "INT" if feature["type"] == "int" else "DOUBLE"


def _type_check(feature: dict[str, Any]) -> str:
    """The reason a value that does not parse as the feature's type gets."""
    kind = "not_an_integer" if feature["type"] == "int" else "not_a_number"
    return f"WHEN `{feature['name']}` IS NULL THEN '{kind}:{feature['name']}'"


def validation_sql(cfg: dict[str, Any]) -> str:
    """A view over raw lines: the decoded line, its source, the parsed columns and the first
    failed check as reason (NULL when the row is valid on its own)."""
    key, label, specs = cfg["key_column"], cfg["label_column"], cfg["features"]
    features = feature_names(cfg)
    n_fields = len(features) + 2
    n_labels = len(cfg["label_names"])
    field_count = "CHAR_LENGTH(line) - CHAR_LENGTH(REPLACE(line, ',', '')) + 1"
    parsed = [f"{_field(0)} AS `{key}`"]
    parsed += [
        f"TRY_CAST({_field(i)} AS {_sql_type(f)}) AS `{f['name']}`"
        for i, f in enumerate(specs, start=1)
    ]
    parsed.append(f"TRY_CAST({_field(n_fields - 1)} AS INT) AS `{label}`")
    not_finite = ", ".join(_quote(t) for t in NOT_FINITE_TEXT)
    checks = [
        r"WHEN REGEXP(line, '^\s*$') THEN 'empty_payload'",
        # ISO-8859-1 decodes each byte to one character: the length in bytes.
        f"WHEN CHAR_LENGTH(DECODE(payload, 'ISO-8859-1')) > {int(cfg['max_line_bytes'])} "
        f"THEN '{OVERSIZED}'",
        # Decoding replaces bytes that are not UTF-8 with U+FFFD, so they do not round-trip.
        "WHEN ENCODE(line, 'UTF-8') <> payload THEN 'not_utf8'",
        f"WHEN {field_count} < {n_fields} THEN 'missing_fields'",
        f"WHEN {field_count} > {n_fields} THEN 'extra_fields'",
        f"WHEN `{key}` = '' THEN 'missing_key:{key}'",
    ]
    columns = [*features, label]
    checks += [
        f"WHEN {_field(i)} = '' THEN 'missing_value:{c}'" for i, c in enumerate(columns, start=1)
    ]
    checks += [_type_check(f) for f in specs]
    checks += [
        f"WHEN CAST(`{f['name']}` AS STRING) IN ({not_finite}) THEN 'not_finite:{f['name']}'"
        for f in specs
        if f["type"] == "double"
    ]
    checks += [
        f"WHEN NOT (`{c}` >= {float(f['min'])!r} AND `{c}` <= {float(f['max'])!r}) "
        f"THEN 'out_of_range:{c}'"
        for f in specs
        for c in [f["name"]]
    ]
    checks.append(f"WHEN `{label}` IS NULL THEN 'not_an_integer:{label}'")
    checks.append(f"WHEN `{label}` < 0 OR `{label}` >= {n_labels} THEN 'out_of_range:{label}'")
    reason = "CASE " + " ".join(checks) + " ELSE CAST(NULL AS STRING) END"
    decoded = (
        "SELECT payload, DECODE(payload, 'UTF-8') AS line, `file.path` AS source, "
        "`file.modification-time` AS modified FROM raw_lines"
    )
    return (
        f"SELECT payload, line, source, modified, *, {reason} AS reason FROM ("
        f"SELECT payload, line, source, modified, {', '.join(parsed)} FROM ({decoded}) "
        f"WHERE line <> {_quote(cfg['header'])})"
    )


def classification_sql(cfg: dict[str, Any]) -> str:
    """Over the `checked` view: the final reason of each row, adding already_ingested (its
    event id is in the features table) and duplicate_key (not the first of its event id)."""
    key, label, features = cfg["key_column"], cfg["label_column"], feature_names(cfg)
    table = f"`{cfg['catalog_name']}`.`{cfg['namespace']}`.`{cfg['features_table']}`"
    columns = ", ".join(f"c.`{c}`" for c in [key, *features, label])
    # Valid rows sort first, so the row kept for an event id is a valid one when there is one.
    first = (
        f"ROW_NUMBER() OVER (PARTITION BY c.`{key}` ORDER BY "
        "CASE WHEN c.reason IS NULL THEN 0 ELSE 1 END, c.modified, c.source, c.line)"
    )
    final = (
        f"COALESCE(reason, CASE WHEN known IS NOT NULL THEN '{ALREADY_INGESTED}' "
        f"WHEN rn > 1 THEN '{DUPLICATE_KEY}' END)"
    )
    return (
        f"SELECT payload, line, source, {', '.join(f'`{c}`' for c in [key, *features, label])}, "
        f"{final} AS reason FROM ("
        f"SELECT c.payload, c.line, c.source, {columns}, c.reason, k.known, {first} AS rn "
        f"FROM checked AS c LEFT JOIN (SELECT DISTINCT `{key}` AS known FROM {table}) AS k "
        f"ON c.`{key}` = k.known)"
    )


def rejected_sql(cfg: dict[str, Any]) -> str:
    """Over `classified`: the rows for the quarantine, raw payload (an oversized one cut to
    max_line_bytes characters), its exact bytes in base64, reason and source."""
    limit = int(cfg["max_line_bytes"])
    return (
        f"SELECT CASE WHEN reason = '{OVERSIZED}' THEN SUBSTRING(line, 1, {limit}) "
        "ELSE line END AS `raw`, "
        f"CASE WHEN reason = '{OVERSIZED}' THEN CAST(NULL AS STRING) "
        "ELSE TO_BASE64(payload) END AS raw_base64, reason, source "
        f"FROM classified WHERE reason IS NOT NULL AND reason <> '{ALREADY_INGESTED}'"
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


def _pulsar_table(cfg: dict[str, Any], name: str, columns: str, topic: str, **extra: str) -> str:
    options = {
        "connector": "pulsar",
        "topics": topic,
        "service-url": cfg["pulsar_service_url"],
        "format": "json",
        **extra,
        **pulsar_auth_options(cfg),
    }
    return f"CREATE TEMPORARY TABLE {name} ({columns}) WITH ({_options(options)})"


def build_statements(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """DDL to run first, then the INSERTs that make up the job."""
    key, label, features = cfg["key_column"], cfg["label_column"], feature_names(cfg)
    catalog, ns = cfg["catalog_name"], cfg["namespace"]
    typed = ", ".join(
        [f"`{key}` STRING"] + [f"`{f['name']}` {_sql_type(f)}" for f in cfg["features"]]
    )
    files = {"connector": "filesystem", "path": cfg["input_path"], "format": "raw"}
    counts = {"connector": "filesystem", "path": cfg["counts_path"], "format": "json"}
    ddl = [
        f"CREATE CATALOG `{catalog}` WITH ({_options(cfg['iceberg_catalog_options'])})",
        # Bytes, not text: the job itself decodes them, so it can tell which are not UTF-8.
        "CREATE TEMPORARY TABLE raw_lines (payload BYTES, "
        "`file.path` STRING NOT NULL METADATA, "
        "`file.modification-time` TIMESTAMP_LTZ(3) NOT NULL METADATA) "
        f"WITH ({_options(files)})",
        # The message key is a copy of the row key (key fields leave the value): Key_Shared
        # subscribers hash it, and the topic's partitions are chosen by it.
        _pulsar_table(
            cfg,
            "features_topic",
            f"`{MESSAGE_KEY}` STRING, {typed}, `{label}` INT",
            cfg["features_topic"],
            **{
                "key.format": "raw",
                "key.fields": MESSAGE_KEY,
                "sink.topic-routing-mode": "message-key-hash",
            },
        ),
        _pulsar_table(
            cfg,
            "quarantine_topic",
            "`raw` STRING, raw_base64 STRING, reason STRING, source STRING, "
            "quarantined_at TIMESTAMP(3)",
            cfg["quarantine_topic"],
        ),
        f"CREATE TEMPORARY TABLE run_counts (outcome STRING, `rows` BIGINT) "
        f"WITH ({_options(counts)})",
        f"CREATE TEMPORARY VIEW checked AS {validation_sql(cfg)}",
        f"CREATE TEMPORARY VIEW classified AS {classification_sql(cfg)}",
        f"CREATE TEMPORARY VIEW rejected AS {rejected_sql(cfg)}",
    ]
    columns = ", ".join([f"`{key}`"] + [f"`{c}`" for c in features] + [f"`{label}`"])
    now = "CAST(LOCALTIMESTAMP AS TIMESTAMP(6))"
    outcome = f"COALESCE(reason, '{WRITTEN}')"
    inserts = [
        f"INSERT INTO `{catalog}`.`{ns}`.`{cfg['features_table']}` "
        f"SELECT {columns}, {now} FROM classified WHERE reason IS NULL",
        f"INSERT INTO features_topic SELECT `{key}`, {columns} "
        "FROM classified WHERE reason IS NULL",
        f"INSERT INTO `{catalog}`.`{ns}`.`{cfg['quarantine_table']}` "
        f"SELECT COALESCE(`raw`, ''), reason, source, {now} FROM rejected",
        "INSERT INTO quarantine_topic SELECT `raw`, raw_base64, reason, source, "
        "CAST(LOCALTIMESTAMP AS TIMESTAMP(3)) FROM rejected",
        f"INSERT INTO run_counts SELECT {outcome}, COUNT(*) FROM classified GROUP BY {outcome}",
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
    # The two Iceberg committers commit at the same moment. On the SQLite catalog one of them can
    # get SQLITE_BUSY at once (Iceberg's JdbcCatalog leaves a metadata query open on a pooled
    # connection, so SQLite cannot wait for the lock). A committer is a failover region of its
    # own in batch mode: restarting it commits the same files again; nothing upstream reruns.
    conf.set("restart-strategy.type", "fixed-delay")
    conf.set("restart-strategy.fixed-delay.attempts", "3")
    conf.set("restart-strategy.fixed-delay.delay", "2 s")
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
