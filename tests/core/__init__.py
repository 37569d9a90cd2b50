"""tests.core: the pure domain — definitions, conditions, durations, events."""
