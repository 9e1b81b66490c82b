"""``configuration`` and ``cleanup``: point containerd's certs.d at the mirror, and put it back.

The contract with the operator (and with Go Spegel, whose ``_backup`` this reads and writes):

* the first run copies every existing certs.d entry into ``certs.d/_backup``; later runs never
  touch that backup again, so it always holds the operator's configuration, never ours;
* each mirrored registry (or ``_default`` when none is named) gets a directory whose hosts.toml
  lists the mirror targets; entries for other registries are left in place;
* ``cleanup`` removes the directories we wrote, moves the backup back and deletes ``_backup``. It
  can be run again at any point (also after a crash half-way) and, when there is no backup, it
  removes only directories whose hosts.toml carries our marker line.

* a ``_backup`` without our owner file was made by Go Spegel (a migration). Outside it, only
  directories that are recognisably Go Spegel's output (or ours) are replaced by their backed-up
  version or removed; any other entry is the operator's, newer than the backup, and is never
  deleted: one the backup lacks stays in place, and one that differs from its backed-up copy
  stops ``configuration`` and ``cleanup`` with a one-line error that says what to do (which of
  the two versions the operator wants cannot be guessed). Then the backup is adopted: from now
  on it is ours.

Unlike Go Spegel, configuration does not delete the entries of registries it does not mirror:
they carry TLS and credentials for registries the operator still uses. Entries an operator edits
while spegel-py is installed are not merged: cleanup restores the backed-up version.

Every write goes through :mod:`.files` (atomic, fsynced, faithful copies); ``steps`` is its
crash-test hook.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spegel_py.errors import ConfigurationError
from spegel_py.hosts import files
from spegel_py.hosts.render import (
    DEFAULT_DIR,
    MirroredRegistry,
    hosts_document,
    parse_mirrored,
    parse_targets,
    validate_duration,
)
from spegel_py.hosts.toml import dumps

log = logging.getLogger(__name__)


def configure_mirrors(
    config_path: Path | str,
    mirrored_registries: Sequence[str],
    mirror_targets: Sequence[str],
    *,
    resolve_tags: bool = True,
    prepend_existing: bool = False,
    dial_timeout: str | float = "200ms",
    authorization: str | None = None,
    steps: files.Steps = files.no_steps,
) -> list[str]:
    """Write ``<config_path>/<registry>/hosts.toml`` for every mirrored registry.

    ``dial_timeout`` is a Go duration (``200ms``) or seconds. Every input is validated before the
    disk is touched. Returns warnings for the operator (one line each); raises
    :class:`ConfigurationError` when the configuration cannot be written. ``steps``: the
    crash-test hook of :mod:`.files`. ``authorization``: the header containerd sends to the
    mirror (Spegel's basic auth); a hosts.toml carrying it is written 0600, not 0644.
    """
    root = Path(config_path)
    mirrored = parse_mirrored(mirrored_registries)
    targets = parse_targets(mirror_targets)
    dial_timeout = validate_duration(dial_timeout)
    warnings: list[str] = []
    with files.translated(f"cannot configure {root}"):
        root.mkdir(parents=True, exist_ok=True)
        files.remove_leftovers(root)
        _backup_once(root, steps)
        backup = root / files.BACKUP_DIR
        wanted = {m.directory for m in mirrored}
        for entry in mirrored:
            warnings += _adopt_unbacked(root, entry.directory, steps)
            existing, saved = _existing(backup / entry.directory) if prepend_existing else (None, None)
            if existing is not None:
                warnings += _dropped_settings(entry, existing, backup / entry.directory)
            document = hosts_document(
                entry, targets, resolve_tags=resolve_tags, dial_timeout=dial_timeout, existing=existing,
                authorization=authorization,
            )  # fmt: skip
            text = files.MARKER + "\n" + dumps(document)
            files.write_directory(
                root / entry.directory, {files.HOSTS_FILE: text.encode()}, copy_from=saved, steps=steps,
                mode=0o644 if authorization is None else 0o600,
            )  # fmt: skip
            log.info("configured containerd mirror", extra={"registry": entry.directory, "path": str(root)})
        for path in files.entries(root):
            if path.name not in wanted and files.is_ours(path):
                _restore_entry(root, path.name, steps)
        if DEFAULT_DIR in wanted:
            warnings += [
                f"{root / p.name} takes precedence over {DEFAULT_DIR}: pulls from {p.name} bypass the mirror"
                for p in files.entries(root)
                if p.name != DEFAULT_DIR and p.is_dir() and not files.is_ours(p)
            ]
    return warnings


def cleanup_mirrors(config_path: Path | str, *, steps: files.Steps = files.no_steps) -> list[str]:
    """Undo :func:`configure_mirrors`; returns what was done, one line each. Idempotent.

    The backup is copied back entry by entry and deleted only at the end, so a crash half-way
    loses nothing: the next run finishes the job."""
    root = Path(config_path)
    done: list[str] = []
    if not root.is_dir():
        return done
    with files.translated(f"cannot clean up {root}"):
        files.remove_leftovers(root)
        backup = root / files.BACKUP_DIR
        foreign = backup.is_dir() and not _owned(backup)
        if foreign:
            _refuse_conflicts(root, "cleanup")
        for path in files.entries(root):
            disposable = files.is_ours(path) or (foreign and files.is_go_spegel_output(path))
            if disposable and not files.present(backup / path.name):
                files.remove(path, steps=steps)
                done.append(f"removed {path}")
        if backup.is_dir():
            for path in files.entries(backup):
                if _restore_entry(root, path.name, steps):
                    done.append(f"restored {root / path.name}")
            files.remove(backup, steps=steps)
            done.append(f"removed {backup}")
    return done


def _owned(backup: Path) -> bool:
    return (backup / files.BACKUP_OWNER).is_file()


def _backup_once(root: Path, steps: files.Steps) -> None:
    """Copy the operator's entries into ``_backup`` unless a backup already exists.

    The copy is assembled under a temporary name and renamed, so ``_backup`` is complete or absent.
    Our own directories (left by a run whose backup was deleted by hand) are not backed up:
    restoring them would resurrect the mirror configuration after cleanup.
    """
    backup = root / files.BACKUP_DIR
    if files.present(backup):
        if not _owned(backup):
            _adopt_foreign_backup(root, steps)
        return
    staging = files.temp_name(root, "backup")
    staging.mkdir()
    for path in files.entries(root):
        if not files.is_ours(path):
            files.copy_entry(path, staging / path.name, steps=steps)
    files.write_file(staging / files.BACKUP_OWNER, b"spegel-py\n", steps=steps)
    files.rename_into_place(staging, backup, steps=steps)


def _adopt_foreign_backup(root: Path, steps: files.Steps) -> None:
    """Take over a backup made by Go Spegel (a migration to spegel-py).

    Spegel moved the operator's entries into ``_backup`` and left only its own output outside.
    That output is replaced by the backed-up entry of the same name, or removed; an entry outside
    that is not Spegel's is the operator's and is kept (:func:`_refuse_conflicts` stops first if
    it differs from its backed-up copy). Then the owner file says that the backup is ours.
    """
    backup = root / files.BACKUP_DIR
    _refuse_conflicts(root, "configuration")
    log.info("adopting an existing backup", extra={"path": str(backup)})
    for saved in files.entries(backup):
        current = root / saved.name
        if not files.present(current) or _disposable(current):
            _restore_entry(root, saved.name, steps)
    for path in files.entries(root):
        if _disposable(path) and not files.present(backup / path.name):
            files.remove(path, steps=steps)
    files.write_file(backup / files.BACKUP_OWNER, b"spegel-py\n", steps=steps)


def _disposable(entry: Path) -> bool:
    """Output of Go Spegel or of spegel-py: configuration that may be replaced without a trace."""
    return files.is_ours(entry) or files.is_go_spegel_output(entry)


def _refuse_conflicts(root: Path, command: str) -> None:
    """With a foreign backup: stop if an operator's entry outside it differs from its backed-up
    copy. Go Spegel clears certs.d on every start, so such an entry was written after it and is
    newer; which version the operator wants is theirs to say, and neither may be deleted."""
    backup = root / files.BACKUP_DIR
    conflicts = [
        p.name
        for p in files.entries(root)
        if files.present(backup / p.name) and not _disposable(p) and not files.same_tree(p, backup / p.name)
    ]
    if conflicts:
        raise ConfigurationError(
            f"{backup} was not made by spegel-py (Go Spegel's?) and {', '.join(conflicts)} in {root} "
            f"differ from the copies in it: keep the version you want (move it into {backup}, or delete "
            f"the one outside), then run {command} again"
        )


def _adopt_unbacked(root: Path, name: str, steps: files.Steps) -> list[str]:
    """Before replacing ``root/name``: an operator's entry that the backup lacks (created after the
    first run) is added to the backup, never lost; one that differs from its backup copy is
    reported, because cleanup will restore the backup copy."""
    current = root / name
    saved = root / files.BACKUP_DIR / name
    if not files.present(current) or files.is_ours(current):
        return []
    if not files.present(saved):
        files.copy_entry(current, saved, steps=steps)
        return []
    if not files.same_tree(current, saved):
        return [f"{current} changed since it was backed up; cleanup will restore the backed-up version"]
    return []


def _existing(saved: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The backed-up hosts.toml of a registry (parsed) and the directory holding it, whose other
    files (certificates and keys its host entries may name) are copied for --prepend-existing."""
    hosts = saved / files.HOSTS_FILE
    if not hosts.is_file():
        return None, None
    try:
        document = tomllib.loads(hosts.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot prepend to {hosts}: not valid TOML ({exc})") from exc
    return document, saved


def _dropped_settings(entry: MirroredRegistry, existing: Mapping[str, Any], saved: Path) -> list[str]:
    """What --prepend-existing cannot keep: the replaced file's own upstream and its settings."""
    out = []
    theirs = existing.get("server")
    if theirs is not None and theirs != entry.server:
        out.append(f"{saved / files.HOSTS_FILE}: its server {theirs!r} is replaced by {entry.server!r}")
    dropped = sorted(k for k in existing if k not in ("server", "host"))
    if dropped:
        out.append(f"{saved / files.HOSTS_FILE}: server settings {', '.join(dropped)} are not kept")
    return out


def _restore_entry(root: Path, name: str, steps: files.Steps) -> bool:
    """Put a copy of the backed-up ``name`` in place of whatever is there now (or remove ours if
    the backup has no such entry). The backup itself is left whole: a crash half-way through a
    cleanup loses nothing. False if nothing changed (an entry we never replaced is left alone
    rather than swapped for its identical copy)."""
    current = root / name
    saved = root / files.BACKUP_DIR / name
    if not files.present(saved):
        if files.is_ours(current):
            files.remove(current, steps=steps)
            return True
        return False
    if files.present(current) and files.same_tree(current, saved):
        return False
    staged = files.temp_name(root, "restore")
    files.copy_entry(saved, staged, steps=steps)
    files.swap_in(staged, current, steps=steps)
    return True
