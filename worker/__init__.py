"""worker: builds and runs the Temporal worker; the `nudge dev` launcher."""
