"""cli: the `nudge` command — thin: calls the API or starts processes."""
