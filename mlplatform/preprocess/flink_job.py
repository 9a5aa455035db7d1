"""The PyFlink preprocessing job. It runs in the Flink environment (.venv-flink), so it imports
only pyflink and the standard library; its configuration arrives as one JSON file.

Two modes, one job. Batch ("mode": "batch"): raw lines (as bytes) from its sources, CSV folders
(one per header) and JSON-lines folders (Parquet files arrive as JSON lines, see raw_files),
until they end. Stream ("mode": "stream"): one JSON object per message from the Pulsar
raw-events topic, on the session cluster, until stopped (stream_preprocess). Each row is
brought into one shape (every column's value as text) and classified with SQL generated from
the dataset spec. The job writes the valid rows to the Iceberg features table and the Pulsar
features topic (with their event time, event date and the dataset's derived features), the
rejected rows (raw payload, reason, source, time) to the Iceberg quarantine table and the
Pulsar quarantine topic, per-key counts and means over tumbling event-time windows to the
windows table, and a count per outcome (batch: a small JSON file, `counts_path`, that the
caller reads back; stream: per second into the Iceberg counts table). Bad data never fails the
job: every line gets an outcome.

Reasons, the first failed check in this order: empty_payload, oversized_payload (more than
max_line_bytes bytes), not_utf8, not_json (JSON lines: not an object), missing_fields /
extra_fields (CSV: the wrong number of fields; JSON: a required key absent, a key that is no
column), missing_key:<key>, missing_value:<col> (empty, or JSON null), wrong_type:<col> (JSON:
a string, boolean, object or array where a number belongs; "NaN" and "Infinity" strings are
read as those numbers), not_a_number:<col> / not_an_integer:<col> (int columns and the label:
digits only), not_finite:<col> (NaN, infinity), out_of_range:<col> (each feature its own
range; the label a class index); then, among rows that pass all of them, duplicate_key (the
same event id again in this input). Optional columns (added by schema evolution) may be
absent or empty (NULL), but a value must parse as their type.

Exactly-once for replays (batch mode; stream mode: stream_classification_sql). A valid row whose
event id is already in the Iceberg features table (read in this same job, at its start) is not
written again, to either sink, and is counted as already_ingested; it is not quarantined,
because nothing is wrong with it and its data is already in the lake. The check reads only the
replay window: the features table's event-date partitions from `replay_window_start` on (the
caller's today minus MLP_REPLAY_WINDOW_DAYS), so its cost follows the rows of the window, not the
size of the lake. A valid row whose own event date is before the window cannot be checked that
way: it is quarantined as outside_replay_window (kept, never written twice; a run with a wider
window takes it). Among new valid rows with
the same event id, one is written and the others are quarantined as duplicate_key: the one from
the earliest file (modification time, then path) and, within it, the smallest line, so the
choice is deterministic (Flink's raw line source gives no line numbers). Replaying a file, whole
or in part, therefore adds nothing to the features table or topic; its bad rows are quarantined
again, once per run, with that run's time.
Limits:
- runs must not overlap: two jobs started before either commits both see a key as new (the
  preprocess flow holds its namespace's concurrency slot: tasks/preprocess.py);
- the two sinks are not one transaction: Iceberg commits at the end of the job, the Pulsar sink
  publishes as it goes (no Pulsar transactions), so a job that fails after publishing and before
  the Iceberg commit leaves rows on the topic that Iceberg lacks, and its retry publishes them
  again (at least once on the topic in that window; Iceberg stays exact);
- a row's event time is its file's modification time: a file landed again with a new
  modification time more than the window after its first ingestion is new to the check.

Usage: python flink_job.py CONFIG_JSON   (prints a JSON line {"job_id": ..., "status": "SUBMITTED"}
per job once submitted, and a last one with their ids, {"job_ids": [...]}; the config's "jobs"
lists the jobs, each as overrides of the rest of the config). With "rest_url" in the config the job
goes to that Flink session cluster; without, it runs on a local mini-cluster in this process.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlparse

ALREADY_INGESTED = "already_ingested"
DUPLICATE_KEY = "duplicate_key"
OUTSIDE_REPLAY_WINDOW = "outside_replay_window"
OVERSIZED = "oversized_payload"
WRITTEN = "written"  # the outcome of a row that reached both feature sinks
# A double cast to text reads one of these when it is not finite.
NOT_FINITE_TEXT = ("NaN", "Infinity", "-Infinity")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _options(options: dict[str, str]) -> str:
    return ", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


SQL_TYPES = {"string": "STRING", "double": "DOUBLE", "int": "INT", "long": "BIGINT"}
SQL_TYPES["boolean"] = "BOOLEAN"
# The reason a value that does not parse as its column's type gets.
PARSE_REASONS = {"double": "not_a_number", "int": "not_an_integer", "long": "not_an_integer"}
PARSE_REASONS["boolean"] = "not_a_boolean"


def feature_names(cfg: dict[str, Any]) -> list[str]:
    return [f["name"] for f in cfg["features"]]


def row_columns(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every column of a features row in the table's order: the key, the features, the label
    (an int from 0 to the number of classes - 1), then the optional columns that schema
    evolution added (name, type), which may be absent or empty (NULL)."""
    label = {
        "name": cfg["label_column"],
        "type": "int",
        "min": 0,
        "max": len(cfg["label_names"]) - 1,
    }
    return [
        {"name": cfg["key_column"], "type": "string", "required": True, "key": True},
        *({**f, "required": True} for f in cfg["features"]),
        {**label, "required": True},
        *({**c, "required": False} for c in cfg.get("optional_columns", [])),
    ]


def _sql_type(column: dict[str, Any]) -> str:
    return SQL_TYPES[column["type"]]


def is_stream(cfg: dict[str, Any]) -> bool:
    return cfg.get("mode") == "stream"


def _carried(cfg: dict[str, Any]) -> str:
    """The columns every stage passes on: the raw bytes, the decoded line, where the row came
    from, when (`modified`: a file's modification time; `event_time`: the row's event time)
    and, in stream mode, the processing time that orders rows per event id and the raw message's
    id (base64), which the features message carries on (SOURCE_ID_PROPERTY)."""
    stream = ", proc, raw_id" if is_stream(cfg) else ""
    return "payload, line, source, modified, event_time" + stream


def _csv_source_sql(
    source: dict[str, Any], table: str, columns: list[dict[str, Any]], carried: str
) -> str:
    """One CSV source's lines: each column's text by its position in the file's header (NULL
    when the file lacks an optional column), and a shape reason for a wrong number of fields."""
    names = source["columns"]
    n = len(names)
    count = "CHAR_LENGTH(line) - CHAR_LENGTH(REPLACE(line, ',', '')) + 1"
    shape = (
        f"CASE WHEN {count} < {n} THEN 'missing_fields' WHEN {count} > {n} "
        "THEN 'extra_fields' ELSE CAST(NULL AS STRING) END"
    )
    values = [
        # Blanks (spaces, tabs) around a value are cut; SQL's TRIM cuts only spaces.
        rf"REGEXP_REPLACE(SPLIT_INDEX(line, ',', {names.index(c['name'])}), '^\s+|\s+$', '')"
        if c["name"] in names
        else "CAST(NULL AS STRING)"
        for c in columns
    ]
    header = f" WHERE line <> {_quote(source['header'])}" if source.get("header") else ""
    wrong = ["CAST(NULL AS STRING)"] * len(columns)
    return _source_select(f"({_decoded(table)})", carried, shape, values, wrong, header)


def _json_source_sql(table: str, columns: list[dict[str, Any]], carried: str) -> str:
    """One JSON-lines source: each column's value as text (a nested value as its JSON), a
    wrong_type reason per column (JSON's own types: a string, boolean, object or array where a
    number belongs), and a shape reason: not a JSON object, a required key absent, a key that
    is no column."""
    # The line parsed once (MLP_JSON_FIELDS, infra/flink/java: [number of keys, then per column
    # the first character of its JSON value, which tells its JSON type, and its value as text]),
    # and per column: p<j> whether its key is there, k<j> that first character.
    probes = []
    for j in range(len(columns)):
        probes.append(f"jf[{2 + 2 * j}] IS NOT NULL AS p{j}")
        probes.append(f"jf[{2 + 2 * j}] AS k{j}")
    n_present = " + ".join(f"CASE WHEN p{j} THEN 1 ELSE 0 END" for j in range(len(columns)))
    absent = " OR ".join(f"NOT p{j}" for j, c in enumerate(columns) if c["required"])
    shape = (
        "CASE WHEN jf IS NULL THEN 'not_json' "
        f"WHEN {absent} THEN 'missing_fields' "
        f"WHEN CAST(jf[1] AS INT) > {n_present} THEN 'extra_fields' "
        "ELSE CAST(NULL AS STRING) END"
    )
    values, wrong = [], []
    not_finite = ", ".join(_quote(t) for t in NOT_FINITE_TEXT)
    for j, c in enumerate(columns):
        value, kind = f"jf[{3 + 2 * j}]", f"k{j}"
        values.append(value)
        if c["type"] == "string":
            bad = f"{kind} IN ('{{', '[')"
        elif c["type"] == "boolean":
            bad = f"{kind} IN ('\"', '{{', '[') OR {kind} BETWEEN '0' AND '9' OR {kind} = '-'"
        else:  # a number; a string only for the non-finite values JSON cannot spell
            bad = (
                f"{kind} IN ('t', 'f', '{{', '[') OR ({kind} = '\"' AND "
                f"{value} NOT IN ({not_finite}))"
            )
        wrong.append(
            f"CASE WHEN p{j} AND ({bad}) THEN 'wrong_type:{c['name']}' "
            "ELSE CAST(NULL AS STRING) END"
        )
    names = ", ".join(_quote(c["name"]) for c in columns)
    inner = f"SELECT *, {JSON_FIELDS}(line, {names}) AS jf FROM ({_decoded(table)})"
    probed = f"(SELECT *, {', '.join(probes)} FROM ({inner}))"
    return _source_select(probed, carried, shape, values, wrong, "")


JSON_FIELDS = "MLP_JSON_FIELDS"  # infra/flink/java/io/mlplatform/flink/JsonFields.java


def _decoded(table: str) -> str:
    return f"SELECT *, DECODE(payload, 'UTF-8') AS line FROM {table}"


def _source_select(
    rows: str, carried: str, shape: str, values: list[str], wrong: list[str], where: str
) -> str:
    columns = [f"{v} AS v{j}" for j, v in enumerate(values)]
    columns += [f"{w} AS w{j}" for j, w in enumerate(wrong)]
    return f"SELECT {carried}, {shape} AS shape, {', '.join(columns)} FROM {rows}{where}"


def source_sql(cfg: dict[str, Any]) -> str:
    """Every source's rows in one shape (payload, line, source, modified, shape, v<j>, w<j>),
    unioned: the same checks then apply to CSV, JSON lines and Parquet (as JSON lines)."""
    columns, carried = row_columns(cfg), _carried(cfg)
    parts = [
        _csv_source_sql(source, f"raw_{i}", columns, carried)
        if source["format"] == "csv"
        else _json_source_sql(f"raw_{i}", columns, carried)
        for i, source in enumerate(cfg["sources"])
    ]
    return " UNION ALL ".join(parts)


def _checks(column: dict[str, Any], j: int) -> dict[str, str]:
    """The checks of one column, by phase, as CASE branches."""
    name, kind = column["name"], column["type"]
    v, checks = f"v{j}", {}
    if column.get("key"):
        checks["key"] = f"WHEN {v} IS NULL OR {v} = '' THEN 'missing_key:{name}'"
    elif column["required"]:
        checks["missing"] = f"WHEN {v} IS NULL OR {v} = '' THEN 'missing_value:{name}'"
    checks["wrong"] = f"WHEN w{j} IS NOT NULL THEN w{j}"
    if kind in PARSE_REASONS:
        checks["parse"] = f"WHEN {v} <> '' AND `{name}` IS NULL THEN '{PARSE_REASONS[kind]}:{name}'"
    if kind == "double":
        not_finite = ", ".join(_quote(t) for t in NOT_FINITE_TEXT)
        checks["finite"] = (
            f"WHEN CAST(`{name}` AS STRING) IN ({not_finite}) THEN 'not_finite:{name}'"
        )
    if "min" in column:
        lo, hi = float(column["min"]), float(column["max"])
        checks["range"] = (
            f"WHEN NOT (`{name}` >= {lo!r} AND `{name}` <= {hi!r}) THEN 'out_of_range:{name}'"
        )
    return checks


def _parsed(column: dict[str, Any], j: int) -> str:
    if column["type"] == "string":
        value = f"v{j}" if column.get("key") else f"NULLIF(v{j}, '')"
    elif column["type"] in ("int", "long"):  # digits only: TRY_CAST would cut "1.5" to 1
        value = (
            rf"CASE WHEN REGEXP(v{j}, '^\s*[+-]?[0-9]+\s*$') "
            f"THEN TRY_CAST(v{j} AS {_sql_type(column)}) END"
        )
    else:
        value = f"TRY_CAST(v{j} AS {_sql_type(column)})"
    return f"{value} AS `{column['name']}`"


def validation_sql(cfg: dict[str, Any]) -> str:
    """A view over every source's rows: payload, decoded line, source, the parsed columns and
    the first failed check as reason (NULL when the row is valid on its own)."""
    columns = row_columns(cfg)
    by_phase: dict[str, list[str]] = {}
    for j, column in enumerate(columns):
        for phase, check in _checks(column, j).items():
            by_phase.setdefault(phase, []).append(check)
    checks = [
        r"WHEN REGEXP(line, '^\s*$') THEN 'empty_payload'",
        # ISO-8859-1 decodes each byte to one character: the length in bytes.
        f"WHEN CHAR_LENGTH(DECODE(payload, 'ISO-8859-1')) > {int(cfg['max_line_bytes'])} "
        f"THEN '{OVERSIZED}'",
        # Decoding replaces bytes that are not UTF-8 with U+FFFD, so they do not round-trip.
        "WHEN ENCODE(line, 'UTF-8') <> payload THEN 'not_utf8'",
        "WHEN shape IS NOT NULL THEN shape",
    ]
    for phase in ("key", "missing", "wrong", "parse", "finite", "range"):
        checks += by_phase.get(phase, [])
    reason = "CASE " + " ".join(checks) + " ELSE CAST(NULL AS STRING) END"
    parsed = ", ".join(_parsed(c, j) for j, c in enumerate(columns))
    names = ", ".join(f"`{c['name']}`" for c in columns)
    return (
        f"SELECT {_carried(cfg)}, {names}, {reason} AS reason FROM ("
        f"SELECT *, {parsed} FROM ({source_sql(cfg)}))"
    )


def classification_sql(cfg: dict[str, Any]) -> str:
    """Over the `checked` view: the final reason of each row, adding outside_replay_window (its
    event date is before the replay window), already_ingested (its event id is in the features
    table's rows of the window) and duplicate_key (not the first of its event id)."""
    if is_stream(cfg):
        return stream_classification_sql(cfg)
    key = cfg["key_column"]
    names = [c["name"] for c in row_columns(cfg)]
    table = f"`{cfg['catalog_name']}`.`{cfg['namespace']}`.`{cfg['features_table']}`"
    start = f"DATE {_quote(cfg['replay_window_start'])}"
    plain, columns = ", ".join(f"`{c}`" for c in names), ", ".join(f"c.`{c}`" for c in names)
    # A constant filter on the partition column: the Iceberg source reads only the window's files.
    known = f"SELECT DISTINCT `{key}` AS known FROM {table} WHERE `event_date` >= {start}"
    # Valid rows sort first, so the row kept for an event id is a valid one when there is one.
    first = (
        f"ROW_NUMBER() OVER (PARTITION BY c.`{key}` ORDER BY "
        "CASE WHEN c.reason IS NULL THEN 0 ELSE 1 END, c.modified, c.source, c.line)"
    )
    final = (
        f"COALESCE(reason, CASE WHEN known IS NOT NULL THEN '{ALREADY_INGESTED}' "
        f"WHEN rn > 1 THEN '{DUPLICATE_KEY}' END)"
    )
    in_window = (
        f"SELECT {_carried(cfg)}, {plain}, COALESCE(reason, "
        f"CASE WHEN CAST(CAST(event_time AS TIMESTAMP(3)) AS DATE) < {start} "
        f"THEN '{OUTSIDE_REPLAY_WINDOW}' END) AS reason FROM checked"
    )
    return (
        f"SELECT payload, line, source, event_time, {plain}, {final} AS reason FROM ("
        f"SELECT c.payload, c.line, c.source, c.event_time, {columns}, c.reason, k.known, "
        f"{first} AS rn "
        f"FROM ({in_window}) AS c LEFT JOIN ({known}) AS k "
        f"ON c.`{key}` = k.known)"
    )


def stream_classification_sql(cfg: dict[str, Any]) -> str:
    """Stream mode: a valid row is the first of its event id when no valid row with that id
    came before it in processing order. The running count per event id is keyed state (an
    append-only OVER aggregation), kept in checkpoints and savepoints, so a resumed job still
    knows the ids it has seen. Ids ingested by batch runs are not looked up (no already_ingested
    in stream mode)."""
    key = cfg["key_column"]
    names = ", ".join(f"`{c['name']}`" for c in row_columns(cfg))
    seen = (
        f"SUM(CASE WHEN reason IS NULL THEN 1 ELSE 0 END) OVER (PARTITION BY `{key}` "
        "ORDER BY proc ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    return (
        f"SELECT payload, line, source, event_time, proc, raw_id, {names}, "
        f"COALESCE(reason, CASE WHEN valid_so_far > 1 THEN '{DUPLICATE_KEY}' END) AS reason "
        f"FROM (SELECT *, {seen} AS valid_so_far FROM checked)"
    )


def rejected_sql(cfg: dict[str, Any]) -> str:
    """Over `classified`: the rows for the quarantine, raw payload (an oversized one cut to
    max_line_bytes characters), its exact bytes in base64, reason and source."""
    limit = int(cfg["max_line_bytes"])
    return (
        f"SELECT CASE WHEN reason = '{OVERSIZED}' THEN SUBSTRING(line, 1, {limit}) "
        "ELSE line END AS `raw`, "
        f"CASE WHEN reason = '{OVERSIZED}' THEN CAST(NULL AS STRING) "
        f"ELSE TO_BASE64(payload) END AS raw_base64, reason, source{', raw_id' * is_stream(cfg)} "
        f"FROM classified WHERE reason IS NOT NULL AND reason <> '{ALREADY_INGESTED}'"
    )


# Stream mode runs as two jobs, each with its own subscription, checkpoints and state:
# "topics", the real-time one (the checks on the raw events, into the features and quarantine
# topics; short checkpoints: little to replay after a failure), and "lake", which copies those
# two topics into the Iceberg tables (lake_statements; a commit per checkpoint: long ones keep
# the tables' snapshots and files few). Batch mode: "all" (the checks into every sink).
PARTS: dict[str, frozenset[str] | None] = {
    "all": None,
    "topics": frozenset({"features_topic", "quarantine_topic"}),
}
MESSAGE_KEY = "_message_key"
# Stream mode: each features message's properties name the raw event it came from (its raw-events
# partition and message id), so that stream consumers can tell the at-least-once delivery's
# repeats (inference/stream/partitions.py reads them).
SOURCE_TOPIC_PROPERTY = "mlp.source.topic"
SOURCE_ID_PROPERTY = "mlp.source.id"
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


EXACTLY_ONCE_CONNECTOR = "pulsar-exactly-once"  # infra/flink/java


def _pulsar_sink(cfg: dict[str, Any]) -> dict[str, str]:
    """The Pulsar sinks' connector. The connector's own SQL sink is always at-least-once: it
    flushes what it sent before each checkpoint completes (and at the end of a batch), so a
    savepoint leaves nothing unsent behind it, but a failed task's rows since its last
    checkpoint are published again. Stream mode's exactly-once connector also sends each
    checkpoint's rows in a transaction that the checkpoint's completion commits; a failed
    task's open one is aborted, by the broker after the timeout."""
    # One message per entry, no batches: the connector (4.1.0) resumes a source from the entry
    # after its last message read, and loses the rest of a batch read in part (FLINK-36180,
    # fixed upstream after the last release). The lake job reads these topics and resumes.
    unbatched = {"pulsar.producer.batchingEnabled": "false"}
    if is_stream(cfg) and cfg["delivery"] == "exactly-once":
        timeout = {"pulsar.sink.transactionTimeoutMillis": str(cfg["transaction_timeout_ms"])}
        return {"connector": EXACTLY_ONCE_CONNECTOR, **timeout, **unbatched}
    return {"connector": "pulsar", **unbatched}


def _pulsar_table(cfg: dict[str, Any], name: str, columns: str, topic: str, **extra: str) -> str:
    options = {
        **_pulsar_sink(cfg),
        "topics": topic,
        "service-url": cfg["pulsar_service_url"],
        "format": "json",
        **extra,
        **pulsar_auth_options(cfg),
    }
    return f"CREATE TEMPORARY TABLE {name} ({columns}) WITH ({_options(options)})"


def _pulsar_source(cfg: dict[str, Any], topic: str, payload_format: str) -> dict[str, str]:
    """A stream job's Pulsar source: its own subscription (the job's name), from the topic's
    earliest message on the first start (a savepoint or checkpoint says where after that)."""
    return {
        "connector": "pulsar",
        "topics": topic,
        "service-url": cfg["pulsar_service_url"],
        "format": payload_format,
        "source.subscription-name": cfg["job_name"],
        "source.start.message-id": "earliest",
        # Hand on what a fetch got after at most flush_ms, not after 100 messages or 10 s.
        "pulsar.source.maxFetchTime": str(int(cfg["flush_ms"])),
        **pulsar_auth_options(cfg),
    }


def _raw_tables(cfg: dict[str, Any]) -> list[str]:
    """Each source as a view raw_<i> of (payload, source, modified, event_time[, proc]). Bytes,
    not text: the job itself decodes them, so it can tell which are not UTF-8. A file's rows
    take its modification time as event time; a Pulsar message its publish time, with a
    watermark watermark_delay_s behind it."""
    if is_stream(cfg):
        options = _pulsar_source(cfg, cfg["raw_events_topic"], "raw")
        delay = int(cfg["watermark_delay_s"])
        return [
            "CREATE TEMPORARY TABLE raw_pulsar (payload BYTES, "
            "topic STRING METADATA VIRTUAL, publish_time TIMESTAMP_LTZ(3) METADATA VIRTUAL, "
            "message_id BYTES METADATA VIRTUAL, "
            f"proc AS PROCTIME(), WATERMARK FOR publish_time AS publish_time - "
            f"INTERVAL '{delay}' SECOND) WITH ({_options(options)})",
            "CREATE TEMPORARY VIEW raw_0 AS SELECT payload, CONCAT('pulsar:', topic) AS source, "
            "CAST(NULL AS TIMESTAMP_LTZ(3)) AS modified, publish_time AS event_time, proc, "
            "TO_BASE64(message_id) AS raw_id FROM raw_pulsar",
        ]
    statements = []
    for i, source in enumerate(cfg["sources"]):
        files = {"connector": "filesystem", "path": source["path"], "format": "raw"}
        statements += [
            f"CREATE TEMPORARY TABLE raw_file_{i} (payload BYTES, "
            "`file.path` STRING NOT NULL METADATA, "
            "`file.modification-time` TIMESTAMP_LTZ(3) NOT NULL METADATA) "
            f"WITH ({_options(files)})",
            f"CREATE TEMPORARY VIEW raw_{i} AS SELECT payload, `file.path` AS source, "
            "`file.modification-time` AS modified, `file.modification-time` AS event_time "
            f"FROM raw_file_{i}",
        ]
    return statements


def windows_sql(cfg: dict[str, Any]) -> str:
    """Per window key (default: the label), the count and each feature's mean of the valid rows
    over tumbling event-time windows of window_s seconds (key_by -> reduce, in SQL)."""
    key = cfg["window_key"]
    means = ", ".join(f"AVG(CAST(`{f}` AS DOUBLE))" for f in feature_names(cfg))
    size = int(cfg["window_s"])
    return (
        f"SELECT `{key}`, CAST(window_start AS TIMESTAMP(6)), CAST(window_end AS TIMESTAMP(6)), "
        f"COUNT(*), {means} FROM TABLE(TUMBLE(TABLE valid_rows, DESCRIPTOR(event_time), "
        f"INTERVAL '{size}' SECOND)) GROUP BY `{key}`, window_start, window_end"
    )


def counts_insert(cfg: dict[str, Any]) -> str:
    """Rows per outcome: batch mode, into the run_counts file once the input ends. A stream
    never ends, so there the counts go per second of processing time (append-only) into the
    Iceberg counts table, tagged with the run id, committed with the data on checkpoints."""
    outcome = f"COALESCE(reason, '{WRITTEN}')"
    if not is_stream(cfg):
        return (
            f"INSERT INTO run_counts SELECT {outcome}, COUNT(*) FROM classified GROUP BY {outcome}"
        )
    table = f"`{cfg['catalog_name']}`.`{cfg['namespace']}`.`{cfg['counts_table']}`"
    return (
        f"INSERT INTO {table} SELECT {_quote(cfg['run_id'])}, outcome, "
        "CAST(window_start AS TIMESTAMP(6)), COUNT(*) FROM TABLE(TUMBLE(TABLE outcomes, "
        "DESCRIPTOR(proc), INTERVAL '1' SECOND)) GROUP BY outcome, window_start, window_end"
    )


def added_columns(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The columns the job adds to a valid row (name, SQL type, value): its event time and
    date (the features table's partition), and the dataset's derived features."""
    event_time = "CAST(event_time AS TIMESTAMP(3))"  # in the job's time zone, UTC
    return [
        ("event_time", "TIMESTAMP(3)", event_time),
        ("event_date", "DATE", f"CAST({event_time} AS DATE)"),
        *((d["name"], "DOUBLE", d["sql"]) for d in cfg.get("derived", [])),
    ]


PROPERTIES = "`properties` MAP<STRING, STRING> METADATA"


# A stream message's properties: the raw event it came from.
SOURCE_MAP = f"MAP[{_quote(SOURCE_TOPIC_PROPERTY)}, source, {_quote(SOURCE_ID_PROPERTY)}, raw_id]"


def _catalog_ddl(cfg: dict[str, Any]) -> str:
    return (
        f"CREATE CATALOG `{cfg['catalog_name']}` WITH ({_options(cfg['iceberg_catalog_options'])})"
    )


def _features_table_insert(cfg: dict[str, Any], values: str, rows: str) -> str:
    """Into the features table, by name: columns added to an older table (event time,
    derived) come after the others."""
    names = [c["name"] for c in row_columns(cfg)] + ["ingested_at"]
    names += [name for name, _, _ in added_columns(cfg)]
    table = f"`{cfg['catalog_name']}`.`{cfg['namespace']}`.`{cfg['features_table']}`"
    return f"INSERT INTO {table} ({', '.join(f'`{n}`' for n in names)}) SELECT {values} FROM {rows}"


NOW = "CAST(LOCALTIMESTAMP AS TIMESTAMP(6))"


def _quarantine_table_insert(cfg: dict[str, Any]) -> str:
    table = f"`{cfg['catalog_name']}`.`{cfg['namespace']}`.`{cfg['quarantine_table']}`"
    return f"INSERT INTO {table} SELECT COALESCE(`raw`, ''), reason, source, {NOW} FROM rejected"


def _windows_table_insert(cfg: dict[str, Any]) -> str:
    table = f"`{cfg['catalog_name']}`.`{cfg['namespace']}`.`{cfg['windows_table']}`"
    return f"INSERT INTO {table} {windows_sql(cfg)}"


def lake_statements(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Stream mode's lake job: the features and quarantine topics the real-time job writes,
    copied into the Iceberg features and quarantine tables, with the windows and the counts
    per outcome computed from them. The checks are not run again: each raw event's outcome is
    the real-time job's. Its at-least-once delivery can publish a raw event's row again after
    a failure (the message's properties name the raw event: SOURCE_ID_PROPERTY); only the first
    copy of each raw event goes on, by keyed state that lives as long as the dedup horizon."""
    typed = [f"`{c['name']}` {_sql_type(c)}" for c in row_columns(cfg)]
    typed += [f"`{name}` {kind}" for name, kind, _ in added_columns(cfg)]
    per_message = f"{PROPERTIES} VIRTUAL, proc AS PROCTIME()"
    delay = int(cfg["watermark_delay_s"])
    quarantine = _options(_pulsar_source(cfg, cfg["quarantine_topic"], "json"))
    raw_event = (
        f"CONCAT(`properties`[{_quote(SOURCE_TOPIC_PROPERTY)}], ' ', "
        f"`properties`[{_quote(SOURCE_ID_PROPERTY)}])"
    )
    copies = (
        "COUNT(*) OVER (PARTITION BY raw_event ORDER BY proc "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    first = f"SELECT * FROM (SELECT *, {copies} AS copies FROM (SELECT *, {raw_event} AS raw_event"
    # One source per features partition, each with its own watermark: the union's is the
    # least of them. One source over all partitions would read one partition's backlog ahead
    # of another's (after a restart) and find the other's rows late, dropping them from the
    # windows; each partition holds its rows in raw-event order.
    topic, partitions = cfg["features_topic"], int(cfg["features_partitions"])
    parts = [f"{topic}-partition-{i}" for i in range(partitions)] if partitions else [topic]
    ddl = [
        _catalog_ddl(cfg),
        *(
            f"CREATE TEMPORARY TABLE features_in_{i} ({', '.join(typed)}, {per_message}, "
            f"WATERMARK FOR event_time AS event_time - INTERVAL '{delay}' SECOND) "
            f"WITH ({_options(_pulsar_source(cfg, part, 'json'))})"
            for i, part in enumerate(parts)
        ),
        "CREATE TEMPORARY VIEW features_in AS "
        + " UNION ALL ".join(f"SELECT * FROM features_in_{i}" for i in range(len(parts))),
        "CREATE TEMPORARY TABLE quarantine_in (`raw` STRING, reason STRING, source STRING, "
        f"{per_message}) WITH ({quarantine})",
        f"CREATE TEMPORARY VIEW valid_rows AS {first} FROM features_in)) WHERE copies = 1",
        f"CREATE TEMPORARY VIEW rejected AS {first} FROM quarantine_in)) WHERE copies = 1",
        f"CREATE TEMPORARY VIEW outcomes AS SELECT {_quote(WRITTEN)} AS outcome, proc "
        "FROM valid_rows UNION ALL SELECT reason, proc FROM rejected",
    ]
    row = [f"`{c['name']}`" for c in row_columns(cfg)]
    values = ", ".join([*row, NOW, *(f"`{name}`" for name, _, _ in added_columns(cfg))])
    inserts = [
        _features_table_insert(cfg, values, "valid_rows"),
        _quarantine_table_insert(cfg),
        _windows_table_insert(cfg),
        counts_insert(cfg),
    ]
    return ddl, inserts


def build_statements(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """DDL to run first, then the INSERTs that make up the job."""
    if is_stream(cfg) and cfg.get("part") == "lake":
        return lake_statements(cfg)
    key, columns = cfg["key_column"], row_columns(cfg)
    typed = ", ".join(f"`{c['name']}` {_sql_type(c)}" for c in columns)
    counts = {"connector": "filesystem", "path": cfg["counts_path"], "format": "json"}
    outcome = f"COALESCE(reason, '{WRITTEN}')"
    stream = is_stream(cfg)
    ddl = [
        # The real-time job writes no table: it opens no catalog.
        *([] if cfg.get("part") == "topics" else [_catalog_ddl(cfg)]),
        *_raw_tables(cfg),
        # The message key is a copy of the row key (key fields leave the value): Key_Shared
        # subscribers hash it, and the topic's partitions are chosen by it.
        _pulsar_table(
            cfg,
            "features_topic",
            f"`{MESSAGE_KEY}` STRING, {typed}, "
            + ", ".join(f"`{name}` {kind}" for name, kind, _ in added_columns(cfg))
            + (
                f", {PROPERTIES}, `raw_time` TIMESTAMP_LTZ(3) METADATA FROM 'event_time'"
                if stream
                else ""
            ),
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
            f"quarantined_at TIMESTAMP(3){f', {PROPERTIES}' * stream}",
            cfg["quarantine_topic"],
        ),
        *(
            []
            if stream
            else [
                f"CREATE TEMPORARY TABLE run_counts (outcome STRING, `rows` BIGINT) "
                f"WITH ({_options(counts)})"
            ]
        ),
        f"CREATE TEMPORARY SYSTEM FUNCTION {JSON_FIELDS} AS "
        "'io.mlplatform.flink.JsonFields' LANGUAGE JAVA",
        f"CREATE TEMPORARY VIEW checked AS {validation_sql(cfg)}",
        f"CREATE TEMPORARY VIEW classified AS {classification_sql(cfg)}",
        f"CREATE TEMPORARY VIEW rejected AS {rejected_sql(cfg)}",
        "CREATE TEMPORARY VIEW valid_rows AS SELECT * FROM classified WHERE reason IS NULL",
        # Stream mode's counts are windowed by processing time (counts_insert).
        *(
            [f"CREATE TEMPORARY VIEW outcomes AS SELECT {outcome} AS outcome, proc FROM classified"]
            if stream
            else []
        ),
    ]
    row = ", ".join(f"`{c['name']}`" for c in columns)
    extra = ", ".join(value for _, _, value in added_columns(cfg))
    # Stream mode: each message names the raw event it came from; a features message also
    # carries its event time, the raw event's publish time (the consumers measure latency
    # from it).
    source = f", {SOURCE_MAP}" if stream else ""
    inserts = {
        "features_table": _features_table_insert(cfg, f"{row}, {NOW}, {extra}", "valid_rows"),
        "features_topic": f"INSERT INTO features_topic SELECT `{key}`, {row}, {extra}{source}"
        f"{', event_time' * stream} FROM valid_rows",
        "quarantine_table": _quarantine_table_insert(cfg),
        "quarantine_topic": "INSERT INTO quarantine_topic SELECT `raw`, raw_base64, reason, "
        f"source, CAST(LOCALTIMESTAMP AS TIMESTAMP(3)){source} FROM rejected",
        "windows_table": _windows_table_insert(cfg),
        "counts": counts_insert(cfg),
    }
    part = PARTS[cfg.get("part", "all")]
    return ddl, [statement for sink, statement in inserts.items() if part is None or sink in part]


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
    if cfg.get("savepoint_path"):
        target.set_string("execution.savepoint.path", cfg["savepoint_path"])
    settings = EnvironmentSettings.new_instance().with_configuration(target)
    mode = settings.in_streaming_mode() if is_stream(cfg) else settings.in_batch_mode()
    env = TableEnvironment.create(mode.build())
    conf = env.get_config()
    conf.set("parallelism.default", str(cfg["parallelism"]))
    conf.set("python.executable", cfg["python_executable"])
    conf.set("pipeline.name", cfg["job_name"])
    conf.set("table.local-time-zone", "UTC")  # event times and ingested_at are UTC
    if not is_stream(cfg):
        # A failed task restarts (a committer is a failover region of its own in batch mode:
        # restarting it commits the same files again; nothing upstream reruns).
        conf.set("restart-strategy.type", "fixed-delay")
        conf.set("restart-strategy.fixed-delay.attempts", "3")
        conf.set("restart-strategy.fixed-delay.delay", "2 s")
    else:
        # A stream job restarts from its last checkpoint as long as it fails now and then.
        conf.set("restart-strategy.type", "exponential-delay")
        backoff = int(cfg.get("restart_backoff_ms", 100))
        conf.set("restart-strategy.exponential-delay.initial-backoff", f"{backoff} ms")
        conf.set("restart-strategy.exponential-delay.max-backoff", "30 s")
        conf.set("execution.checkpointing.interval", f"{int(cfg['checkpoint_interval_ms'])} ms")
        conf.set("execution.checkpointing.mode", "EXACTLY_ONCE")
        conf.set("execution.buffer-timeout", f"{int(cfg['flush_ms'])} ms")  # network buffers
        conf.set("execution.checkpointing.dir", cfg["checkpoint_dir"])
        # The event ids seen (stream_classification_sql) are forgotten after the dedup horizon:
        # kept for good, they grew until the TaskManager ran out of memory, and every checkpoint
        # copied them all (and a restore read them all back).
        conf.set("table.exec.state.ttl", f"{int(cfg['dedup_horizon_ms'])} ms")
        conf.set("state.backend.type", cfg["state_backend"])
        incremental = "true" if cfg["state_backend"] == "rocksdb" else "false"
        conf.set("execution.checkpointing.incremental", incremental)
        # Kept when the job is cancelled or fails for good: the next start resumes from it.
        conf.set(
            "execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"
        )
        # A source with no new messages must not hold back the windows' watermark for good.
        # The lake's windows reach the table at its commits: a quiet partition may hold them
        # back that long, which leaves a partition slow to start after a restart more time
        # before its rows would count as late.
        idle_ms = int(cfg["watermark_delay_s"]) * 1000
        if cfg.get("part") == "lake":
            idle_ms = max(idle_ms, int(cfg["checkpoint_interval_ms"]))
        conf.set("table.exec.source.idle-timeout", f"{idle_ms} ms")
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
    if is_stream(cfg):  # runs on the session cluster until stopped with a savepoint
        return {"job_id": job_id, "status": "RUNNING"}
    result.wait()
    return {"job_id": job_id, "status": "FINISHED"}


def run_all(cfg: dict[str, Any]) -> list[str]:
    """Each of cfg["jobs"] (overrides of the config) submitted in turn from this process (one
    JVM for all; a batch job runs to its end before the next); their job ids."""
    jobs = cfg.pop("jobs", None) or [{}]
    return [run({**cfg, **job})["job_id"] for job in jobs]


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        config = json.load(handle)
    print(json.dumps({"job_ids": run_all(config)}), flush=True)
