"""Operating the platform: the mlp CLI, status reports, and the demo."""
