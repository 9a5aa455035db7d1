"""The model registry: versions, stages, verified artifacts, following the champion."""
