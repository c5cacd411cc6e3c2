"""Alembic environment: the URL comes from Settings (DATABASE_URL), the metadata from labcore.models."""

from alembic import context

from labcore import models  # noqa: F401  (registers the tables)
from labcore.config import get_settings
from labcore.db import Base, make_engine

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
        sqlite = conn.dialect.name == "sqlite"
        if (
            sqlite
        ):  # batch migrations rebuild tables: a DROP must not cascade into the rows that point at them
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()  # end the transaction the PRAGMA began: Alembic must own the migrations' one
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=sqlite)
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
    engine.dispose()


run()
