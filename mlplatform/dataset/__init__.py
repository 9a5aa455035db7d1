"""What the data looks like: the dataset spec (spec.py), the bundled specs (specs/), and the
prediction record every model output takes (prediction_record.py)."""
