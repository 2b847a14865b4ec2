"""The ``kbchat`` command: the embedded services, the process supervisor and the CLI."""
