"""Fault tests: workers killed, providers down — nothing lost, nothing sent twice."""
