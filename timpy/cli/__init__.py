"""The ``timpy`` command."""
