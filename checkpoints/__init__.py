"""Checkpoints of long jobs in a SQL database (SQLite by default, PostgreSQL supported).

Tables (checkpoints.store): a run per execution of a job, a job row naming the current run of each
job, and a unit row per unit of work. A job is a dataset snapshot, a model version and an optional
row filter; a unit is a range of row groups of one Iceberg data file of that snapshot.

Commit protocol of batch inference (mlplatform.inference.batch: job.py plans, leases and
reconciles, runner.py predicts and commits), designed so that a crash between any two steps
is reconciled when the run resumes:

  0. Plan: the run, its job row and all its units (status pending) are inserted in one transaction.
     The job row's primary key makes two concurrent starts of the same job share one run.
  1. Lease: the process that executes a run holds its lease (owner and heartbeat). A second process
     is refused while the lease is live; a lease whose heartbeat is older than its TTL, or whose
     owner process is gone from this host, is taken over.
  2. Predict and write: units are read and predicted by Ray Data, and the workers that predict
     write each unit's predictions as Parquet data files in the predictions table's location.
     Nothing references them yet: no reader sees them. The driver gets only file metadata.
  3. Commit: the data files of one or more complete units are added to the Iceberg predictions
     table in one commit whose snapshot summary holds the run id and the units with their row
     counts (mlp.run_id, mlp.units). The commit is a compare-and-set on the table's main
     branch: the units already in a summary are dropped first (their new files deleted), and a
     concurrent commit makes ours fail and start again from the refreshed table. No unit is ever
     in two commits. Files of an attempt that is never committed are deleted by the driver when
     it knows (a failed or incomplete unit, a unit committed by another run), else (a crash) by
     table maintenance's orphan removal once older than MLP_ORPHAN_MIN_AGE_HOURS; either way no
     snapshot ever references them.
  4. Mark: the units are marked done here, with the Iceberg snapshot id.

  Resume: the Iceberg summaries are trusted over these rows. Units found in a summary but not
  marked done (a crash between 3 and 4) are marked done; every other unit that is not done is
  predicted again (a crash in 2 or before 3 loses only uncommitted work). A unit whose attempt
  fails (an error or a timeout in one of its batches) is retried up to a bounded number of
  attempts, then marked failed with its error; an explicit resume gives failed units new attempts.

Snapshots of the predictions table must not be expired while a run over it is unfinished: their
summaries are the record of what was committed.
"""
