"""Online serving: the champion behind a Ray Serve HTTP application."""
