"""tests.cli: the `nudge` command as a user runs it."""
