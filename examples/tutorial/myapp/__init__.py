"""The tutorial's app: a page with an export button, batchflow mounted, an ``init-db`` command."""

import os

import click
from flask import Flask, render_template
from flask.cli import with_appcontext

from batchflow import BatchFlow
from myapp.models import Contact, db

batchflow = BatchFlow()


def create_app(config=None):
    """The app factory. The web app and every Celery worker (worker.py) call it, so it only
    configures: it never writes to the database (``flask --app myapp init-db`` does)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "change-me"),
        # A relative SQLite path lives in the instance folder: examples/tutorial/instance/.
        SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", "sqlite:///contacts.sqlite"),
        BATCHFLOW_REDIS_URL=os.environ.get("BATCHFLOW_REDIS_URL", "redis://localhost:6379/0"),
    )
    app.config.update(config or {})  # tests pass their own settings
    db.init_app(app)
    from myapp import jobs  # noqa: F401  registers the handlers

    batchflow.init_app(app)
    app.cli.add_command(init_db)

    @app.get("/")
    def index():
        count = db.session.scalar(db.select(db.func.count(Contact.id)))
        return render_template("index.html", count=count)

    return app


@click.command("init-db")
@click.option("--contacts", default=1000, help="How many sample contacts to add.")
@with_appcontext
def init_db(contacts):
    """Create the contacts table and add sample contacts if it is empty."""
    # Here, not in create_app: the web app and every worker run the factory, and two processes
    # seeding an empty table at the same moment would both add the contacts.
    db.create_all()
    if db.session.scalar(db.select(db.func.count(Contact.id))):
        click.echo("The contacts table is not empty: nothing added.")
        return
    db.session.add_all(
        Contact(name=f"Contact {n}", email=f"contact{n}@example.com")
        for n in range(1, contacts + 1)
    )
    db.session.commit()
    click.echo(f"Added {contacts} contacts.")
