"""store: Nudge's database — SQLAlchemy 2 models, sessions, Alembic migrations, queries."""
