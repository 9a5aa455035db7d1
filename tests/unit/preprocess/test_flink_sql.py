"""The Flink SQL that mlplatform.preprocess.flink_job generates from a job config (no Flink)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlplatform.preprocess.batch import job_config, replay_window_start
from mlplatform.preprocess.flink_job import (
    _options,
    _quote,
    build_statements,
    classification_sql,
    feature_names,
    rejected_sql,
    source_sql,
    validation_sql,
)
from mlplatform.sample_data.demo_rows import header
from mlplatform.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        local_dir=tmp_path,
        catalog_name="mylake",
        namespace="myns",
        features_table="feat_t",
        quarantine_table="quar_t",
        features_topic="persistent://public/default/my-topic",
        quarantine_topic="persistent://public/default/my-quarantine",
        max_line_bytes=512,
        pulsar_service_url="pulsar://127.0.0.1:16650",
        feature_min=0.5,
        feature_max=12.0,
    )


@pytest.fixture
def cfg(settings: Settings, tmp_path: Path) -> dict:
    return job_config(settings, tmp_path / "in", "job-1")


def _one(statements: list[str], prefix: str) -> str:
    [statement] = [s for s in statements if s.startswith(prefix)]
    return statement


def test_quote_doubles_single_quotes() -> None:
    assert _quote("plain") == "'plain'"
    assert _quote("it's") == "'it''s'"
    assert _quote("''") == "''''''"
    assert _options({"a'b": "c'd", "k": "v"}) == "'a''b' = 'c''d', 'k' = 'v'"


def test_job_config_carries_settings(cfg: dict, settings: Settings, tmp_path: Path) -> None:
    [source] = cfg["sources"]  # by default: one CSV folder with the dataset's header
    assert source["path"] == f"file://{tmp_path / 'in'}" and source["format"] == "csv"
    assert source["header"] == "event_id,sepal_length,sepal_width,petal_length,petal_width,label"
    assert source["header"] == header(settings)
    assert source["columns"] == settings.dataset_spec.columns
    assert cfg["optional_columns"] == []
    assert cfg["features_topic"] == settings.features_topic
    assert cfg["quarantine_topic"] == "persistent://public/default/my-quarantine"
    assert cfg["max_line_bytes"] == 512
    assert cfg["counts_path"] == f"file://{tmp_path}/state/flink/job-1-counts"
    assert cfg["job_name"] == "job-1"


def test_ddl_names_catalog_source_and_topic(cfg: dict) -> None:
    ddl, _ = build_statements(cfg)
    catalog, raw, raw_view, topic, quarantine_topic, counts, function = ddl[:7]
    checked, classified, rejected = ddl[7:10]
    assert function.startswith("CREATE TEMPORARY SYSTEM FUNCTION MLP_JSON_FIELDS AS")
    assert catalog.startswith("CREATE CATALOG `mylake` WITH (")
    for key, value in cfg["iceberg_catalog_options"].items():
        assert f"{_quote(key)} = {_quote(value)}" in catalog
    assert "'catalog-impl' = 'org.apache.iceberg.jdbc.JdbcCatalog'" in catalog
    assert "CREATE TEMPORARY TABLE raw_file_0" in raw
    assert raw_view.startswith("CREATE TEMPORARY VIEW raw_0 AS SELECT payload, `file.path` AS")
    assert f"'path' = '{cfg['sources'][0]['path']}'" in raw
    assert "'format' = 'raw'" in raw
    # Bytes, decoded by the job itself, so bytes that are not UTF-8 can be told apart.
    assert "(payload BYTES, `file.path` STRING NOT NULL METADATA, " in raw
    assert "`file.modification-time` TIMESTAMP_LTZ(3) NOT NULL METADATA" in raw
    assert "CREATE TEMPORARY TABLE features_topic" in topic
    assert "'connector' = 'pulsar'" in topic
    assert "'topics' = 'persistent://public/default/my-topic'" in topic
    assert "'service-url' = 'pulsar://127.0.0.1:16650'" in topic
    for column in feature_names(cfg):
        assert f"`{column}` DOUBLE" in topic
    assert "`event_id` STRING" in topic and "`label` INT" in topic
    # The row key is also the message key, so Key_Shared consumers and partitions follow it.
    assert "'key.fields' = '_message_key'" in topic and "`_message_key` STRING" in topic
    assert checked == f"CREATE TEMPORARY VIEW checked AS {validation_sql(cfg)}"
    assert classified == f"CREATE TEMPORARY VIEW classified AS {classification_sql(cfg)}"
    assert rejected == f"CREATE TEMPORARY VIEW rejected AS {rejected_sql(cfg)}"


def test_quarantine_topic_and_counts_tables(cfg: dict) -> None:
    ddl, _ = build_statements(cfg)
    quarantine_topic = _one(ddl, "CREATE TEMPORARY TABLE quarantine_topic")
    counts = _one(ddl, "CREATE TEMPORARY TABLE run_counts")
    assert quarantine_topic.startswith(
        "CREATE TEMPORARY TABLE quarantine_topic (`raw` STRING, raw_base64 STRING, "
        "reason STRING, source STRING, quarantined_at TIMESTAMP(3))"
    )
    assert "'topics' = 'persistent://public/default/my-quarantine'" in quarantine_topic
    assert "'connector' = 'pulsar'" in quarantine_topic and "'format' = 'json'" in quarantine_topic
    assert "key.fields" not in quarantine_topic
    assert counts.startswith("CREATE TEMPORARY TABLE run_counts (outcome STRING, `rows` BIGINT)")
    assert f"'path' = '{cfg['counts_path']}'" in counts and "'format' = 'json'" in counts


def test_token_file_reaches_both_pulsar_tables(cfg: dict) -> None:
    ddl, _ = build_statements({**cfg, "pulsar_token_file": "/run/t.token"})
    for topic in (
        _one(ddl, "CREATE TEMPORARY TABLE features_topic"),
        _one(ddl, "CREATE TEMPORARY TABLE quarantine_topic"),
    ):
        assert "'pulsar.client.authParams' = 'file:///run/t.token'" in topic


def test_inserts_target_configured_tables(cfg: dict) -> None:
    _, inserts = build_statements(cfg)
    features, topic, quarantine, quarantine_topic, windows, counts = inserts
    assert windows.startswith("INSERT INTO `mylake`.`myns`.`feature_windows` SELECT `label`")
    columns = "`event_id`, `sepal_length`, `sepal_width`, `petal_length`, `petal_width`, `label`"
    added = "`ingested_at`, `event_time`, `event_date`, `petal_area`, `sepal_ratio`"
    assert features.startswith(f"INSERT INTO `mylake`.`myns`.`feat_t` ({columns}, {added}) ")
    event_time = "CAST(event_time AS TIMESTAMP(3))"
    job_added = (
        f"{event_time}, CAST({event_time} AS DATE), CAST(`petal_length` * `petal_width` AS "
        "DOUBLE), CAST(`sepal_length` / GREATEST ( `sepal_width` , 0.1 ) AS DOUBLE)"
    )
    now = "CAST(LOCALTIMESTAMP AS TIMESTAMP(6))"
    assert features.endswith(f"SELECT {columns}, {now}, {job_added} FROM valid_rows")
    assert topic == (
        f"INSERT INTO features_topic SELECT `event_id`, {columns}, {job_added} FROM valid_rows"
    )
    assert quarantine.startswith("INSERT INTO `mylake`.`myns`.`quar_t` SELECT ")
    assert quarantine.endswith("FROM rejected")
    assert "reason, source" in quarantine
    assert quarantine_topic.startswith(
        "INSERT INTO quarantine_topic SELECT `raw`, raw_base64, reason, source, "
    )
    assert quarantine_topic.endswith("FROM rejected")
    assert counts == (
        "INSERT INTO run_counts SELECT COALESCE(reason, 'written'), COUNT(*) FROM classified "
        "GROUP BY COALESCE(reason, 'written')"
    )


def test_every_feature_gets_value_number_finite_and_range_checks(cfg: dict) -> None:
    sql = validation_sql(cfg)
    for i, column in enumerate(feature_names(cfg), start=1):
        # Each column's text by its position in the header, then parsed by its type.
        assert f"REGEXP_REPLACE(SPLIT_INDEX(line, ',', {i}), '^\\s+|\\s+$', '') AS v{i}" in sql
        assert f"TRY_CAST(v{i} AS DOUBLE) AS `{column}`" in sql
        assert f"WHEN v{i} IS NULL OR v{i} = '' THEN 'missing_value:{column}'" in sql
        assert f"WHEN v{i} <> '' AND `{column}` IS NULL THEN 'not_a_number:{column}'" in sql
        # Named apart from out_of_range; the text of the parsed double, not a comparison, since
        # the planner folds a full-range comparison into IS NOT NULL, which NaN passes.
        assert (
            f"WHEN CAST(`{column}` AS STRING) IN ('NaN', 'Infinity', '-Infinity') "
            f"THEN 'not_finite:{column}'" in sql
        )
        assert (
            f"WHEN NOT (`{column}` >= 0.5 AND `{column}` <= 12.0) THEN 'out_of_range:{column}'"
            in sql
        )
        assert sql.index(f"'not_finite:{column}'") < sql.index(f"'out_of_range:{column}'")
    for kind in ("missing_value", "not_a_number", "not_finite", "out_of_range"):
        n = len(cfg["features"]) + (kind in ("missing_value", "out_of_range"))
        assert len(re.findall(rf"'{kind}:", sql)) == n, kind


def test_payload_checks(cfg: dict) -> None:
    sql = validation_sql(cfg)
    assert r"WHEN REGEXP(line, '^\s*$') THEN 'empty_payload'" in sql
    # ISO-8859-1 gives one character per byte: the payload's length in bytes.
    assert "WHEN CHAR_LENGTH(DECODE(payload, 'ISO-8859-1')) > 512 THEN 'oversized_payload'" in sql
    assert "WHEN ENCODE(line, 'UTF-8') <> payload THEN 'not_utf8'" in sql
    assert "DECODE(payload, 'UTF-8') AS line" in sql


def test_checks_are_ordered_and_complete(cfg: dict) -> None:
    sql = validation_sql(cfg)
    n_fields = len(cfg["features"]) + 2
    assert f"< {n_fields} THEN 'missing_fields'" in sql
    assert f"> {n_fields} THEN 'extra_fields'" in sql
    assert "WHEN v0 IS NULL OR v0 = '' THEN 'missing_key:event_id'" in sql
    assert f"WHEN v{n_fields - 1} <> '' AND `label` IS NULL THEN 'not_an_integer:label'" in sql
    assert "WHEN NOT (`label` >= 0.0 AND `label` <= 2.0) THEN 'out_of_range:label'" in sql
    # An integer is digits only: a cast alone would cut "1.5" to 1.
    label = n_fields - 1
    assert (
        rf"CASE WHEN REGEXP(v{label}, '^\s*[+-]?[0-9]+\s*$') THEN TRY_CAST(v{label} AS INT) END "
        "AS `label`"
    ) in sql
    reasons = [
        "'empty_payload'",
        "'oversized_payload'",
        "'not_utf8'",
        "WHEN shape IS NOT NULL",
        "'missing_key:",
        "'missing_value:",
        "WHEN w0 IS NOT NULL",
        "'not_a_number:",
        "'not_an_integer:label'",
        "'not_finite:",
        "'out_of_range:sepal",
        "'out_of_range:label'",
    ]
    positions = [sql.index(r) for r in reasons]
    assert positions == sorted(positions)
    assert "ELSE CAST(NULL AS STRING) END AS reason" in sql


def test_classification_skips_known_keys_and_quarantines_duplicates(cfg: dict) -> None:
    sql = classification_sql(cfg)
    # The features table's replay window, read in the same job: a key already there is not
    # written again; a row dated before the window is quarantined instead of checked.
    start = cfg["replay_window_start"]
    assert (
        "LEFT JOIN (SELECT DISTINCT `event_id` AS known FROM `mylake`.`myns`.`feat_t` "
        f"WHERE `event_date` >= DATE '{start}') AS k ON c.`event_id` = k.known"
    ) in sql
    assert (
        f"CASE WHEN CAST(CAST(event_time AS TIMESTAMP(3)) AS DATE) < DATE '{start}' "
        "THEN 'outside_replay_window' END) AS reason FROM checked"
    ) in sql
    # One row per key is kept: valid rows first, then by file and line, deterministically.
    assert (
        "ROW_NUMBER() OVER (PARTITION BY c.`event_id` ORDER BY "
        "CASE WHEN c.reason IS NULL THEN 0 ELSE 1 END, c.modified, c.source, c.line) AS rn"
    ) in sql
    # A row's own failure wins; then already_ingested; then duplicate_key.
    assert (
        "COALESCE(reason, CASE WHEN known IS NOT NULL THEN 'already_ingested' "
        "WHEN rn > 1 THEN 'duplicate_key' END) AS reason"
    ) in sql
    assert sql.endswith("ON c.`event_id` = k.known)")


def test_the_replay_window_ends_today_and_spans_the_setting(settings: Settings) -> None:
    s = settings.model_copy(update={"replay_window_days": 7})
    assert replay_window_start(s, date(2026, 3, 2)) == date(2026, 2, 23)
    with pytest.raises(ValidationError, match="replay_window_days"):
        Settings(_env_file=None, replay_window_days=0)


def test_rejected_rows_leave_already_ingested_out_and_cut_oversized(cfg: dict) -> None:
    sql = rejected_sql(cfg)
    assert sql.endswith("FROM classified WHERE reason IS NOT NULL AND reason <> 'already_ingested'")
    assert "CASE WHEN reason = 'oversized_payload' THEN SUBSTRING(line, 1, 512)" in sql
    assert "ELSE TO_BASE64(payload) END AS raw_base64" in sql


def test_header_line_is_filtered(cfg: dict) -> None:
    sql = validation_sql(cfg)
    assert sql.endswith(f"FROM raw_0) WHERE line <> '{cfg['sources'][0]['header']}'))")


def test_header_with_single_quote_is_escaped(cfg: dict) -> None:
    cfg = {**cfg, "sources": [{**cfg["sources"][0], "header": "id,o'brien,label"}]}
    sql = validation_sql(cfg)
    assert "WHERE line <> 'id,o''brien,label'" in sql
    assert "o'brien" not in sql.replace("o''brien", "")


def test_config_values_with_quotes_are_escaped(cfg: dict) -> None:
    cfg = {
        **cfg,
        "sources": [{**cfg["sources"][0], "path": "file:///data/it's"}],
        "iceberg_catalog_options": {**cfg["iceberg_catalog_options"], "jdbc.password": "p'w"},
    }
    ddl, _ = build_statements(cfg)
    assert "'jdbc.password' = 'p''w'" in ddl[0]
    assert "'path' = 'file:///data/it''s'" in ddl[1]


def test_custom_schema_changes_generated_sql(cfg: dict) -> None:
    cfg = {
        **cfg,
        "key_column": "id",
        "features": [
            {"name": "x", "type": "double", "min": -1.0, "max": 1.0},
            {"name": "y", "type": "int", "min": 10, "max": 99},
        ],
        "label_column": "cls",
        "label_names": ["a", "b", "c", "d", "e"],
        "sources": [{"format": "csv", "path": "file:///in", "columns": ["id", "x", "y", "cls"]}],
    }
    sql = validation_sql(cfg)
    assert "< 4 THEN 'missing_fields'" in sql and "> 4 THEN 'extra_fields'" in sql
    assert (
        "REGEXP_REPLACE(SPLIT_INDEX(line, ',', 3), '^\\s+|\\s+$', '') AS v3" in sql
        and "TRY_CAST(v3 AS INT) END AS `cls`" in sql
    )
    assert "`cls` <= 4.0) THEN 'out_of_range:cls'" in sql
    assert "WHERE line <>" not in sql  # no header line
    assert "'missing_key:id'" in sql and "'missing_value:cls'" in sql
    assert "sepal_length" not in sql
    # Each feature its own type and range: an integer column is checked as one.
    assert "TRY_CAST(v2 AS INT) END AS `y`" in sql
    assert "WHEN v2 <> '' AND `y` IS NULL THEN 'not_an_integer:y'" in sql
    assert "'not_finite:y'" not in sql
    assert "WHEN NOT (`x` >= -1.0 AND `x` <= 1.0) THEN 'out_of_range:x'" in sql
    assert "WHEN NOT (`y` >= 10.0 AND `y` <= 99.0) THEN 'out_of_range:y'" in sql
    ddl, _ = build_statements(cfg)
    topic = _one(ddl, "CREATE TEMPORARY TABLE features_topic")
    assert "`id` STRING, `x` DOUBLE, `y` INT, `cls` INT" in topic
    assert "PARTITION BY c.`id`" in classification_sql(cfg)


def test_a_run_with_csv_json_and_optional_columns(cfg: dict) -> None:
    """Several sources in one shape: a CSV file with its own header order and a new column,
    JSON lines; the optional columns reach both sinks after the dataset's columns."""
    columns = ["label", "event_id", "sepal_length", "sepal_width", "petal_length", "petal_width"]
    cfg = {
        **cfg,
        "sources": [
            {
                "format": "csv",
                "path": "file:///r/csv-0",
                "columns": [*columns, "ph"],
                "header": ",".join([*columns, "ph"]),
            },
            {"format": "json", "path": "file:///r/json"},
        ],
        "optional_columns": [{"name": "ph", "type": "double"}, {"name": "site", "type": "string"}],
    }
    ddl, inserts = build_statements(cfg)
    assert [s.split(" (")[0].split(" AS ")[0] for s in ddl[1:5]] == [
        "CREATE TEMPORARY TABLE raw_file_0",
        "CREATE TEMPORARY VIEW raw_0",
        "CREATE TEMPORARY TABLE raw_file_1",
        "CREATE TEMPORARY VIEW raw_1",
    ]
    sql = source_sql(cfg)
    assert sql.count(" UNION ALL ") == 1
    csv, json_lines = sql.split(" UNION ALL ")
    # By the header's positions: event_id is the second field, the label the first.
    assert "REGEXP_REPLACE(SPLIT_INDEX(line, ',', 1), '^\\s+|\\s+$', '') AS v0" in csv
    assert "REGEXP_REPLACE(SPLIT_INDEX(line, ',', 0), '^\\s+|\\s+$', '') AS v5" in csv
    assert "REGEXP_REPLACE(SPLIT_INDEX(line, ',', 6), '^\\s+|\\s+$', '') AS v6" in csv
    assert "CAST(NULL AS STRING) AS v7" in csv
    assert "< 7 THEN 'missing_fields'" in csv
    # Parsed once (a function of ours, infra/flink/java), not once per JSON_VALUE call.
    # Its array holds the number of keys, then each column's JSON kind and text, by position.
    assert "MLP_JSON_FIELDS(line, 'event_id', " in json_lines and "JSON_VALUE" not in json_lines
    assert "'ph', 'site') AS jf" in json_lines
    assert "WHEN jf IS NULL THEN 'not_json'" in json_lines
    assert "jf[16] IS NOT NULL AS p7" in json_lines and "jf[17] AS v7" in json_lines
    assert (
        "WHEN NOT p0 OR NOT p1 OR NOT p2 OR NOT p3 OR NOT p4 OR NOT p5 THEN 'missing_fields'"
        in (json_lines)
    )
    assert "WHEN CAST(jf[1] AS INT) > CASE WHEN p0 THEN 1" in json_lines
    assert "THEN 'wrong_type:sepal_length'" in json_lines and "THEN 'wrong_type:site'" in json_lines
    checked = validation_sql(cfg)
    assert "WHEN v6 <> '' AND `ph` IS NULL THEN 'not_a_number:ph'" in checked
    assert "'missing_value:ph'" not in checked and "'missing_value:site'" not in checked
    assert "NULLIF(v7, '') AS `site`" in checked
    features, topic = inserts[0], inserts[1]
    assert "`label`, `ph`, `site`, `ingested_at`, `event_time`" in features
    assert "`label`, `ph`, `site`, CAST(LOCALTIMESTAMP AS TIMESTAMP(6)), CAST(event_" in features
    assert "`label`, `ph`, `site`, CAST(event_time AS TIMESTAMP(3))" in topic
    assert "`ph` DOUBLE, `site` STRING" in _one(ddl, "CREATE TEMPORARY TABLE features_topic")


def test_stream_mode_reads_the_raw_events_topic_and_keeps_the_checks(cfg: dict) -> None:
    stream = {**cfg, "mode": "stream", "sources": [{"format": "json"}]}
    ddl, inserts = build_statements(stream)
    raw = _one(ddl, "CREATE TEMPORARY TABLE raw_pulsar")
    assert f"'topics' = '{cfg['raw_events_topic']}'" in raw and "'format' = 'raw'" in raw
    assert "WATERMARK FOR publish_time AS publish_time - INTERVAL '5' SECOND" in raw
    assert "'source.subscription-name' = 'job-1'" in raw
    assert "'pulsar.source.maxFetchTime' = '10'" in raw  # hand rows on within 10 ms
    # The same per-row checks as batch mode; the duplicate check is keyed state instead.
    checks = validation_sql(stream)
    assert "'missing_fields'" in checks and "'not_utf8'" in checks and ", proc," in checks
    classified = classification_sql(stream)
    assert "ORDER BY proc ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW" in classified
    assert "already_ingested" not in classified  # no lookup of batch-ingested ids
    # At least once by default: each features message names the raw event it came from.
    topic = _one(ddl, "CREATE TEMPORARY TABLE features_topic")
    assert "'connector' = 'pulsar'" in topic and "transaction" not in topic
    assert "`properties` MAP<STRING, STRING> METADATA" in topic
    assert "message_id BYTES METADATA VIRTUAL" in raw
    assert "TO_BASE64(message_id) AS raw_id" in _one(ddl, "CREATE TEMPORARY VIEW raw_0")
    published = _one(inserts, "INSERT INTO features_topic")
    assert "MAP['mlp.source.topic', source, 'mlp.source.id', raw_id], event_time FROM" in published
    assert "`raw_time` TIMESTAMP_LTZ(3) METADATA FROM 'event_time'" in topic
    assert "raw_id" in classified
    # Exactly once: both topic sinks publish in transactions, with the configured timeout.
    exactly_once = build_statements({**stream, "delivery": "exactly-once"})[0]
    sinks = ("features_topic", "quarantine_topic")
    for sink in sinks:
        table = _one(exactly_once, f"CREATE TEMPORARY TABLE {sink}")
        assert "'connector' = 'pulsar-exactly-once'" in table
        assert "'pulsar.sink.transactionTimeoutMillis' = '60000'" in table
    # No batches on the topics the lake job reads (a resume mid-batch loses the batch's rest).
    for table in (topic, *(_one(exactly_once, f"CREATE TEMPORARY TABLE {s}") for s in sinks)):
        assert "'pulsar.producer.batchingEnabled' = 'false'" in table
    stream = {**stream, "run_id": "r-1"}
    counts = _one(build_statements(stream)[1], "INSERT INTO `mylake`.`myns`.`preprocess_counts`")
    assert "SELECT 'r-1', outcome" in counts
    assert "TUMBLE(TABLE outcomes, DESCRIPTOR(proc), INTERVAL '1' SECOND)" in counts


def test_stream_mode_splits_the_sinks_between_the_real_time_and_the_lake_job(cfg: dict) -> None:
    stream = {**cfg, "mode": "stream", "sources": [{"format": "json"}], "features_partitions": 2}
    into = lambda part: {s.split()[2] for s in build_statements({**stream, "part": part})[1]}  # noqa: E731
    tables = {f"`mylake`.`myns`.`{cfg[name]}`" for name in ("features_table", "quarantine_table")}
    tables |= {f"`mylake`.`myns`.`{cfg[n]}`" for n in ("windows_table", "counts_table")}
    assert into("topics") == {"features_topic", "quarantine_topic"}
    assert into("lake") == tables
    assert into("all") == into("topics") | into("lake")
    topics_ddl = build_statements({**stream, "part": "topics"})[0]
    assert not any("CREATE CATALOG" in d for d in topics_ddl)  # no table, no catalog
    quarantine = _one(topics_ddl, "CREATE TEMPORARY TABLE quarantine_topic")
    assert "`properties` MAP<STRING, STRING> METADATA" in quarantine
    # The lake copies the two topics: no raw events, no checks; the first copy of each raw
    # event (an at-least-once delivery may publish one again after a failure).
    lake = {**stream, "part": "lake", "job_name": "lake-1"}
    ddl, inserts = build_statements(lake)
    assert not any("raw_pulsar" in d or "MLP_JSON_FIELDS" in d for d in ddl)
    # One source per features partition, each with its own watermark (a backlog read from one
    # partition ahead of the other must not make the other's rows late).
    sources = {
        "features_in_0": f"{cfg['features_topic']}-partition-0",
        "features_in_1": f"{cfg['features_topic']}-partition-1",
        "quarantine_in": cfg["quarantine_topic"],
    }
    for name, topic in sources.items():
        source = _one(ddl, f"CREATE TEMPORARY TABLE {name} ")
        assert f"'topics' = '{topic}'" in source and "'format' = 'json'" in source
        assert "'source.subscription-name' = 'lake-1'" in source
        assert "`properties` MAP<STRING, STRING> METADATA VIRTUAL" in source
        assert ("WATERMARK FOR event_time" in source) == name.startswith("features")
    assert _one(ddl, "CREATE TEMPORARY VIEW features_in ").endswith(
        "SELECT * FROM features_in_0 UNION ALL SELECT * FROM features_in_1"
    )
    unpartitioned = build_statements({**lake, "features_partitions": 0})[0]
    only = _one(unpartitioned, "CREATE TEMPORARY TABLE features_in_0 ")
    assert f"'topics' = '{cfg['features_topic']}'" in only
    for view in ("valid_rows", "rejected"):
        first = _one(ddl, f"CREATE TEMPORARY VIEW {view}")
        assert "COUNT(*) OVER (PARTITION BY raw_event ORDER BY proc" in first
        assert "WHERE copies = 1" in first
    assert "`properties`['mlp.source.id']" in _one(ddl, "CREATE TEMPORARY VIEW valid_rows")
    features = _one(inserts, "INSERT INTO `mylake`.`myns`.`feat_t`")
    assert features.endswith(
        "`event_time`, `event_date`, `petal_area`, `sepal_ratio` FROM valid_rows"
    )


def test_batch_mode_has_no_stream_only_parts(cfg: dict) -> None:
    ddl, inserts = build_statements(cfg)
    assert not any("raw_pulsar" in d or "pulsar-exactly-once" in d for d in ddl)
    assert "ORDER BY proc" not in classification_sql(cfg)
    counts = _one(inserts, "INSERT INTO run_counts")
    assert "GROUP BY COALESCE(reason, 'written')" in counts


def test_windows_count_and_average_per_key_over_tumbling_windows(cfg: dict) -> None:
    _, inserts = build_statements({**cfg, "window_s": 30})
    [windows] = [i for i in inserts if "`feature_windows`" in i]
    assert "TUMBLE(TABLE valid_rows, DESCRIPTOR(event_time), INTERVAL '30' SECOND)" in windows
    assert "GROUP BY `label`, window_start, window_end" in windows
    for column in feature_names(cfg):
        assert f"AVG(CAST(`{column}` AS DOUBLE))" in windows
