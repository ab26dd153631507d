"""Alembic environment: runs on the connection bulkmail hands it (see ``db.upgrade``)."""

from alembic import context

from bulkmail_kernel.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        # Stand-alone use (alembic revision --autogenerate): connect to sqlalchemy.url.
        from bulkmail_kernel.db import create_db_engine

        engine = create_db_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place: batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
