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
