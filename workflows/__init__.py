"""workflows: JourneyWorkflow and friends. Deterministic: no I/O, no store, no httpx."""
