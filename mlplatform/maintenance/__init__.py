"""Table maintenance: compaction, snapshot expiry and orphan-file removal (tables.py)."""
