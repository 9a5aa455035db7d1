"""Generated rows: the demo's raw rows (valid and malformed), synthetic features for tests and
benchmarks."""
