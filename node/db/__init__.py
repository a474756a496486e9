"""The SQL index: models, engine set-up and Alembic migrations."""
