"""The one prediction record of batch, stream and online serving: its field names.

Every prediction has the input's key (in the dataset's key column, e.g. `event_id`; HTTP
requests carry none), `class_index` (an index into the model's label_names), `label` (that
class's name), `probabilities` (one per class, in label_names order: a list in the Iceberg
tables and on the predictions topic, an object by class name in HTTP answers) and
`model_version`. Batch rows add `run_id` and `input_snapshot_id`, and `reason` for an input row
that breaks the dataset's rules (a table written by another tool): such a row gets no class,
label or probabilities but the reason (`out_of_range:<feature>`, `not_finite:<feature>`,
`missing_value:<feature>`: the Flink job's codes), so every input row still has exactly one row.
Stream rows add `message_id` (in the table) and `predicted_at`. The predictions tables' schemas
(connectors.iceberg_tables) and the computing of records (inference.predictions) follow from
these names.
"""

from __future__ import annotations

CLASS_INDEX = "class_index"
LABEL = "label"
PROBABILITIES = "probabilities"
MODEL_VERSION = "model_version"
# Batch rows only.
REASON = "reason"
RUN_ID = "run_id"
INPUT_SNAPSHOT_ID = "input_snapshot_id"
# Stream rows only.
MESSAGE_ID = "message_id"
PREDICTED_AT = "predicted_at"

# Names of earlier releases, and the one each became.
RENAMED = {"prediction": CLASS_INDEX, "label_name": LABEL}
