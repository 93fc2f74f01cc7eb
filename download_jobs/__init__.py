"""The ``download-jobs`` command: ``serve`` runs the service, ``get`` downloads through it."""
