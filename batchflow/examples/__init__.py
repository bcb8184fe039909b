"""Example handlers to read, copy and adapt. Importing this package registers nothing.

- :mod:`batchflow.examples.contacts`: Event Espresso's *AttendeesReport*, a CSV export written step
  by step (a :class:`~batchflow.FileJob`). The demo (``batchflow demo``) runs it.

Register an example under a name of your choosing, in a module that your app and your worker both
import::

    from batchflow import registry
    from batchflow.examples.contacts import ContactsReport

    registry.add("contacts-report", ContactsReport)
"""

from .contacts import ContactsReport

__all__ = ["ContactsReport"]
