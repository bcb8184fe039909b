"""The export, as a batchflow handler. It runs in the Celery workers, one step at a time."""

from batchflow import FileJob, registry
from batchflow.sql import KeysetSource
from myapp.models import Contact, db


@registry.register("contacts-report")
class ContactsReport(FileJob):
    filename = "contacts.csv"
    header = ["id", "name", "email"]  # written once, when the job starts
    labels = {"title": "Exporting contacts", "completed": "Your export is ready"}

    def source(self, job):  # the rows to export, walked by their key
        return KeysetSource(db.session, db.select(Contact), key=Contact.id)

    def rows(self, contacts, job):  # each step: the CSV rows of the next contacts
        return [(c.id, c.name, c.email) for c in contacts]
