"""Alembic environment: runs on the engine the node passes in (no alembic.ini needed)."""

from alembic import context

from node.db.models import Base

engine = context.config.attributes["connection_engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
