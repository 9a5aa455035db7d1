"""Training: the candidate grid, retraining on a pinned snapshot, drift, promotion."""
