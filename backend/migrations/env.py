"""Alembic environment: the URL comes from Settings (DATABASE_URL), the metadata from backend.models."""
from alembic import context

from backend import models  # noqa: F401  (registers the tables)
from backend.config import get_settings
from backend.db import Base, make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().db_url


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata,
                          render_as_batch=conn.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
