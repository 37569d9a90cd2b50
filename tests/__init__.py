"""tests: pytest, mirroring the rooms."""
