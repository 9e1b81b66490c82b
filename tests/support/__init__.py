"""Helpers shared by every test package: polling for a condition (:mod:`.poll`) and leak checks.

Test modules import from here (``from support.poll import eventually``), never from one another
or from a ``conftest``.
"""
