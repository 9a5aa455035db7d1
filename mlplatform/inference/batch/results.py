"""What a batch inference run returns, and the report of its failed units."""

from __future__ import annotations

from dataclasses import dataclass, field


class BatchInferenceFailed(RuntimeError):
    """Too many rows are in failed units; the message lists them."""


@dataclass(frozen=True)
class FailedUnit:
    unit: int
    file_path: str
    rows: int
    attempts: int
    error: str


# The fixed steps of a run, in order, with what each one's time (seconds from the call's start)
# marks; the time a step takes is the difference to the one before it.
STEPS = {
    "planned": "the job opened: its run found, or its units planned from the snapshot's files",
    "ray_connected": "connected to Ray",
    "pool_ready": "the model's warm pool ready: found, or started, with the version loaded "
    "(fused: pool actors; separated: the Serve application)",
    "first_prediction": "the first predictions came back: the model stage's actors are ready",
    "first_commit": "the first units committed to Iceberg and marked done",
    "last_commit": "the last units committed",
    "finished": "the run recorded as finished",
}


def step_costs(steps: dict[str, float]) -> dict[str, float]:
    """What each step reached cost: its time less the time of the step before it."""
    marks = [0.0, *steps.values()]
    return {n: round(b - a, 3) for n, a, b in zip(steps, marks[:-1], marks[1:], strict=True)}


@dataclass(frozen=True)
class BatchResult:
    run_id: str
    resumed: bool
    mode: str
    snapshot_id: int
    model_version: int
    input_rows: int
    units_total: int
    skipped_units: int
    skipped_rows: int
    predicted_rows: int  # rows committed now (refused rows included: each has its reason)
    commits: int
    failed_units: list[FailedUnit] = field(default_factory=list)
    # Of predicted_rows, those whose features break the dataset's rules, by reason.
    refused_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # Seconds from the call's start to each step of STEPS that this execution reached.
    steps: dict[str, float] = field(default_factory=dict)
    # The rows covered: those appended after since_snapshot_id (None: every row), and why.
    since_snapshot_id: int | None = None
    basis: str = "every row"

    @property
    def refused(self) -> int:
        return sum(self.refused_rows.values())

    @property
    def rows_per_s(self) -> float:
        return self.predicted_rows / self.seconds if self.seconds else 0.0


def failure_report(run_id: str, failed: list[FailedUnit], rows_total: int) -> str:
    rows = sum(f.rows for f in failed)
    lines = [
        f"run {run_id}: {len(failed)} unit(s) with {rows} of {rows_total} rows failed after "
        "their last attempt:"
    ]
    lines += [
        f"  unit {f.unit} ({f.file_path}, {f.rows} rows, {f.attempts} attempts): {f.error}"
        for f in failed
    ]
    return "\n".join(lines)
