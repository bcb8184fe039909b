"""The export, as a batchflow handler. It runs in the Celery workers, one step at a time."""

from batchflow import FileJob, registry
from myapp.models import Contact, db


@registry.register("contacts-report")
class ContactsReport(FileJob):
    filename = "contacts.csv"
    labels = {"title": "Exporting contacts", "completed": "Your export is ready"}

    def create_job(self, job):  # once: count, write the header
        job.set_total(db.session.scalar(db.select(db.func.count(Contact.id))))
        job.data["last_id"] = 0
        self.write_rows(job, [["id", "name", "email"]])

    def continue_job(self, job, batch_size):  # again and again: about one second of work
        # Page by key, not by offset: the next rows after the last one written. A contact added
        # or deleted meanwhile cannot shift the pages, and each step costs the same.
        query = (
            db.select(Contact)
            .where(Contact.id > job.data["last_id"])
            .order_by(Contact.id)
            .limit(batch_size)
        )
        contacts = db.session.scalars(query).all()
        self.write_rows(job, [(c.id, c.name, c.email) for c in contacts])
        job.mark_processed(len(contacts))
        if len(contacts) < batch_size:  # a short batch: there is nothing after it
            job.complete(f"{job.units_processed:,} contacts exported")
        else:
            job.data["last_id"] = contacts[-1].id  # committed with this step's rows
