"""tests.bench: the benchmarks run end to end; their figures are printed, never asserted."""
