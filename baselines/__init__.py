"""Drop-in frameworks. Every module here is imported by pcpo.algorithms.discover()
and registers a Framework; nothing else is needed to add a baseline."""
