"""tests.store: the store's queries and migrations, each on SQLite and PostgreSQL."""
