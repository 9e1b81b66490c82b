"""Helpers shared by every test package: waiting for a condition (:mod:`.poll`), the leak checks
(:mod:`.leaks`), the guard against unmarked processes (:mod:`.spawnguard`), writes killed at a
chosen step (:mod:`.crash`) and directory-tree snapshots (:mod:`.trees`).

Test modules import from here (``from support.poll import eventually``), never from one another
or from a ``conftest``.
"""
