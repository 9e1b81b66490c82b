"""Helpers shared by every test package: waiting for a condition (:mod:`.poll`), the leak checks
(:mod:`.leaks`) and the guard against unmarked processes (:mod:`.spawnguard`).

Test modules import from here (``from support.poll import eventually``), never from one another
or from a ``conftest``.
"""
