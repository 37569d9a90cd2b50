"""api: the FastAPI app — Segment-compatible ingestion, campaigns, routing to journeys."""
