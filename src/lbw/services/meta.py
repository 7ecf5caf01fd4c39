"""``lbw meta``: show a LoRA's metadata, or set user fields, block weights and the web UI sidecar.

Editing rewrites only the header (``lbw.files.writer.rewrite_metadata``): every other key is kept, tensor bytes
stay identical, ``sshs_model_hash``/``sshs_legacy_hash`` are recomputed from the written bytes, the write is
atomic, and an in-place edit keeps ``<file>.backup`` (once, made only when the edit succeeds) unless told not to.
Edits hold the file's lock (a concurrent edit waits, then sees this one), go through symbolic links to the file
they point to, and refuse a hard-linked file unless told how to treat its other names.

Example:
    >>> view = show_meta("style.safetensors")
    >>> view.hashes["stored"] == view.hashes["computed"]
    True
    >>> result = edit_meta("style.safetensors", MetaChanges(author="me", rating=8))
    >>> result.changes["ssmd_author"]
    (None, 'me')
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lbw.errors import LbwError, OutputError
from lbw.files import metadata as md
from lbw.files.atomic import atomic_path
from lbw.files.hashes import LEGACY_HASH_KEY, MODEL_HASH_KEY, stored_and_computed
from lbw.files.locks import LOCK_WAIT_S, file_lock, resolve_target, target_lock
from lbw.files.lora_file import read_lora_header
from lbw.files.stale import clean_stale_temps
from lbw.files.writer import WrittenFile, rewrite_metadata

BACKUP_SUFFIX = ".backup"
EDIT_SUFFIX = ".lbw-edit"  # the complete edited file during an in-place edit of a hard-linked file
HardlinkMode = Literal["refuse", "in-place", "split"]
HARDLINK_MODES: tuple[str, ...] = ("refuse", "in-place", "split")


@dataclass(frozen=True)
class MetaChanges:
    """What to set. None = leave alone; ``""`` stores an empty string; ``unset`` removes keys.

    ``author``, ``description`` and ``tags`` are written both to the Additional Networks key (``ssmd_*``) and to
    ``modelspec.*``, so every UI shows the same value.
    """

    display_name: str | None = None
    author: str | None = None
    source: str | None = None
    keywords: str | None = None
    description: str | None = None
    rating: int | str | None = None
    tags: str | None = None
    cover: Path | None = None
    title: str | None = None
    trigger_phrase: str | None = None
    usage_hint: str | None = None
    license: str | None = None
    thumbnail: Path | None = None
    weights: str | None = None
    set_keys: Mapping[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        """True when nothing would change."""
        singles = (getattr(self, f.name) for f in fields(self) if f.name not in ("set_keys", "unset"))
        return all(value is None for value in singles) and not self.set_keys and not self.unset


@dataclass(frozen=True)
class SidecarChanges:
    """What to put in the web UI sidecar ``<name>.json`` (None = keep the existing value, or derive it)."""

    activation_text: str | None = None
    preferred_weight: float | None = None
    notes: str | None = None
    negative_text: str | None = None
    sd_version: str | None = None


@dataclass(frozen=True)
class MetaView:
    """Everything ``lbw meta FILE`` shows."""

    path: Path
    metadata: dict[str, str]
    hashes: dict[str, str | None]
    sidecar_path: Path
    sidecar: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object: grouped metadata (full values), hashes, block weights, cover, sidecar."""
        weights = md.read_block_weights(self.metadata)
        return {
            "file": str(self.path),
            "metadata": md.group_metadata(self.metadata),
            "hashes": {**self.hashes, "match": self.hashes["stored"] == self.hashes["computed"]},
            "block_weights": None if weights is None else {"text": weights.format(), "layout": weights.layout.name},
            "cover": _image_summary(self.metadata, md.COVER_KEY),
            "thumbnail": _image_summary(self.metadata, md.THUMBNAIL_KEY),
            "sidecar": {"path": str(self.sidecar_path), "content": self.sidecar},
        }


@dataclass(frozen=True)
class MetaEditResult:
    """What an edit did: the file written (None if nothing needed writing), the backup, key changes
    ``{key: (old, new)}`` (None = absent), the hashes now stored, the sidecar written, and the symbolic link the
    file was reached through (None when the path given was the file itself)."""

    path: Path | None
    backup: Path | None
    changes: dict[str, tuple[str | None, str | None]]
    hashes: dict[str, str | None]
    sidecar: Path | None = None
    sidecar_content: dict[str, Any] | None = None
    link: Path | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "written": None if self.path is None else str(self.path),
            "link": None if self.link is None else str(self.link),
            "backup": None if self.backup is None else str(self.backup),
            "changes": {k: {"old": _short(k, old), "new": _short(k, new)} for k, (old, new) in self.changes.items()},
            "hashes": self.hashes,
            "sidecar": None if self.sidecar is None else {"path": str(self.sidecar), "content": self.sidecar_content},
            "warnings": list(self.warnings),
        }


def weights_warnings(current: Mapping[str, str], changes: MetaChanges) -> tuple[str, ...]:
    """Why writing these tuned block weights may mislead: the file already has them baked in.

    >>> weights_warnings({"lbw_baked_weights": "A:1,0,..."}, MetaChanges(weights="A:1,0,..."))[0][:40]
    'this file already has lbw_baked_weights '
    """
    if changes.weights is None or md.BAKED_WEIGHTS_KEY not in current:
        return ()
    return (f"this file already has {md.BAKED_WEIGHTS_KEY} ({current[md.BAKED_WEIGHTS_KEY][:80]}): the block weights "
            f"are baked into its tensors; {md.BLOCK_WEIGHTS_KEY} tells users to apply block weights when they load "
            "it, so the weights would apply twice",)


def show_meta(path: str | os.PathLike[str]) -> MetaView:
    """Read a LoRA's metadata, its stored and computed hashes and its sidecar (if any)."""
    path = Path(path)
    header = read_lora_header(path)
    side = md.sidecar_path(path)
    return MetaView(path, dict(header.metadata), stored_and_computed(path), side, md.read_sidecar(side))


def planned_metadata(current: Mapping[str, str], changes: MetaChanges) -> dict[str, str]:
    """The metadata after ``changes`` (pure; hash keys are left for the writer to recompute).

    >>> planned_metadata({"ss_network_dim": "8"}, MetaChanges(author="me"))
    {'ss_network_dim': '8', 'ssmd_author': 'me', 'modelspec.author': 'me'}
    """
    result = dict(current)
    for key in changes.unset:
        if key not in result:
            raise LbwError(f"cannot unset {key!r}: the file has no such key")
        if key.startswith("sshs_"):
            raise LbwError(f"{key} is computed from the file; it cannot be unset (use --rehash to refresh it)")
        del result[key]
    for key, value in changes.set_keys.items():
        if not key or key.startswith("sshs_"):
            raise LbwError(f"cannot set {key!r}: hash keys are computed from the file (use --rehash)"
                           if key else "cannot set an empty key")
        result[key] = value
    simple = {
        "ssmd_display_name": changes.display_name,
        "ssmd_author": changes.author,
        "modelspec.author": changes.author,
        "ssmd_source": changes.source,
        "ssmd_keywords": changes.keywords,
        "ssmd_description": changes.description,
        "modelspec.description": changes.description,
        "ssmd_tags": changes.tags,
        "modelspec.tags": changes.tags,
        "modelspec.title": changes.title,
        "modelspec.trigger_phrase": changes.trigger_phrase,
        "modelspec.usage_hint": changes.usage_hint,
        "modelspec.license": changes.license,
    }
    result.update({key: value for key, value in simple.items() if value is not None})
    if changes.rating is not None:
        result["ssmd_rating"] = md.rating_value(changes.rating)
    if changes.cover is not None:
        result[md.COVER_KEY] = md.cover_images_value(changes.cover)
    if changes.thumbnail is not None:
        result[md.THUMBNAIL_KEY] = md.image_data_url(changes.thumbnail)
    if changes.weights is not None:
        entries = md.block_weights_entries(changes.weights)
        md.check_weights_fit(result, entries[md.BLOCK_LAYOUT_KEY])
        result.update(entries)
    return result


def edit_meta(
    path: str | os.PathLike[str],
    changes: MetaChanges,
    *,
    out: str | os.PathLike[str] | None = None,
    backup: bool = True,
    force: bool = False,
    rehash: bool = False,
    sidecar: SidecarChanges | None = None,
    hardlinks: HardlinkMode = "refuse",
    lock_wait: float = LOCK_WAIT_S,
) -> MetaEditResult:
    """Apply ``changes`` to the LoRA at ``path`` (in place, or into ``out``) and optionally write the sidecar.

    The file is rewritten only when a key changes, ``out`` is given or ``rehash`` is set (refreshes stale
    ``sshs_*`` hashes). An in-place write keeps a copy of the original as ``<file>.backup`` unless one exists or
    ``backup`` is False; the copy is made once the new file is complete, so a failed edit leaves nothing behind.
    ``out`` must not exist unless ``force``.

    The target's lock is held from the read to the end: a second edit of the same file waits up to
    ``lock_wait`` seconds for the first and then reads the file again, so both edits land. ``path`` may be a
    symbolic link: the file it points to is edited (its backup beside it), the link is kept, and the sidecar
    stays beside the link. A file with several hard links is refused unless ``hardlinks`` says what to do:
    ``"in-place"`` edits the shared file (every name sees the change; the complete edited file is first written
    to ``<file>.lbw-edit``, then copied over the file's bytes), ``"split"`` gives this name a new edited file (the
    other names keep the old one).
    """
    given = Path(path)
    real = resolve_target(given)
    read_lora_header(real)  # an unreadable input is reported first (read again under the lock)
    target = Path(out) if out is not None else real
    if out is not None and _same_path(given, target):
        raise OutputError("is the input file; leave out -o to edit in place", where=str(target))
    if out is not None and target.exists() and not force:
        raise OutputError("already exists; use --force to overwrite it", where=str(target))
    if hardlinks not in HARDLINK_MODES:
        raise LbwError(f"--hardlinks expects one of {', '.join(HARDLINK_MODES)}, found {hardlinks!r}")
    with contextlib.ExitStack() as held:
        held.enter_context(target_lock(target, wait=lock_wait if out is None or force else 0.0))
        in_place = False
        if out is None:
            clean_stale_temps(real.parent)  # a killed lbw may have left a second name of the file
            in_place = _hardlink_choice(given, real, hardlinks) == "in-place"
            if in_place:  # other names of the file may be edited in place through their own lock
                held.enter_context(file_lock(real, wait=lock_wait))
        header = read_lora_header(real)
        current = dict(header.metadata)
        planned = planned_metadata(current, changes)
        warnings = weights_warnings(current, changes)
        diff = _diff(current, planned)
        side_path = side_content = None
        if sidecar is not None:  # read and checked before anything is written
            side_path = md.sidecar_path(given if out is None else target)
            side_content = md.update_sidecar(md.read_sidecar(side_path), _sidecar_values(planned, sidecar))
        written_path = backup_path = None
        hashes = {MODEL_HASH_KEY: current.get(MODEL_HASH_KEY), LEGACY_HASH_KEY: current.get(LEGACY_HASH_KEY)}
        if diff or out is not None or rehash:
            made: list[Path] = []

            def keep_backup() -> None:
                if out is None and backup and (copy := _backup_once(real)) is not None:
                    made.append(copy)

            try:
                if in_place:
                    written = _rewrite_in_place(real, planned, keep_backup)
                else:
                    written = rewrite_metadata(real, target, planned, force=force, before_commit=keep_backup)
            except BaseException:
                for copy in made:  # the edit did not happen: neither did its backup
                    with contextlib.suppress(OSError):
                        copy.unlink()
                raise
            written_path = written.path
            backup_path = made[0] if made else None
            hashes = {MODEL_HASH_KEY: written.model_hash, LEGACY_HASH_KEY: written.legacy_hash}
            for key in (MODEL_HASH_KEY, LEGACY_HASH_KEY):
                if current.get(key) != hashes[key]:
                    diff[key] = (current.get(key), hashes[key])
        if side_path is not None and side_content is not None:
            md.write_sidecar(side_path, side_content)
    link = given if out is None and given != real else None
    return MetaEditResult(written_path, backup_path, diff, hashes, side_path, side_content, link, warnings)


def _hardlink_choice(given: Path, real: Path, hardlinks: HardlinkMode) -> HardlinkMode:
    """How to edit ``real`` in place given its hard links: "split" (a plain atomic edit) when it has one name."""
    links = real.stat().st_nlink
    if links <= 1:
        return "split"
    if hardlinks == "refuse":
        raise OutputError(
            f"has {links} hard links (other names share its bytes), so an atomic edit would give only this name "
            "the new metadata; choose --hardlinks in-place (every name sees the edit) or --hardlinks split (only "
            "this name gets an edited copy)", where=str(given))
    return hardlinks


def _rewrite_in_place(real: Path, planned: Mapping[str, str], before_commit: Callable[[], object]) -> WrittenFile:
    """Edit a hard-linked file without changing its inode: write the complete edited file to
    ``<file>.lbw-edit`` (atomic, synced), then copy it over the file's bytes and remove it. An interruption during
    the copy leaves ``<file>.lbw-edit`` complete, and the next edit refuses to run until it is dealt with."""
    recovery = real.with_name(real.name + EDIT_SUFFIX)
    if os.path.lexists(recovery):
        raise OutputError(
            f"{recovery.name} exists: an earlier in-place edit was interrupted, and it holds the complete edited "
            f"file; copy it over the file (cp {recovery.name} {real.name} keeps the hard links) and delete it, or "
            "delete it to drop that edit", where=str(real))
    written = rewrite_metadata(real, recovery, planned)
    try:
        before_commit()
    except BaseException:
        recovery.unlink()
        raise
    try:
        with open(recovery, "rb") as source, open(real, "r+b") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            target.truncate()
            target.flush()
            os.fsync(target.fileno())
    except OSError as error:
        raise OutputError(f"the in-place write failed ({error.strerror}); the file may be damaged: "
                          f"{recovery.name} holds the complete edited file", where=str(real)) from None
    recovery.unlink()
    return WrittenFile(real, written.model_hash, written.legacy_hash, written.size)


def _sidecar_values(metadata: Mapping[str, str], changes: SidecarChanges) -> dict[str, Any]:
    """Sidecar entries: explicit values first, else derived from the metadata (trigger phrase or keywords as
    activation text, the description, the sd version)."""
    values: dict[str, Any] = {}
    activation = changes.activation_text
    if activation is None:
        activation = metadata.get("modelspec.trigger_phrase") or metadata.get("ssmd_keywords")
    if activation is not None:
        values["activation text"] = activation
    description = metadata.get("ssmd_description") or metadata.get("modelspec.description")
    if description is not None:
        values["description"] = description
    values["sd version"] = changes.sd_version or md.sd_version(metadata)
    if changes.preferred_weight is not None:
        values["preferred weight"] = changes.preferred_weight
    if changes.notes is not None:
        values["notes"] = changes.notes
    if changes.negative_text is not None:
        values["negative text"] = changes.negative_text
    return values


def _backup_once(path: Path) -> Path | None:
    """Copy ``path`` to ``<path>.backup`` atomically unless a backup already exists (then keep the oldest)."""
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if os.path.lexists(backup):
        return None
    with open(path, "rb") as source, atomic_path(backup, replace=False) as tmp:
        with open(tmp, "wb") as copy:
            shutil.copyfileobj(source, copy, 1 << 20)
        shutil.copymode(path, tmp)
    return backup


def _diff(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, tuple[str | None, str | None]]:
    keys = [k for k in old if k not in new] + [k for k in new if old.get(k) != new[k]]
    return {k: (old.get(k), new.get(k)) for k in keys}


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _image_summary(metadata: Mapping[str, str], key: str) -> str | None:
    value = metadata.get(key)
    return None if value is None else md.describe_image_value(key, value)


def _short(key: str, value: str | None) -> str | None:
    """Image values are summarised (they are megabytes of base64); everything else is kept whole."""
    if value is None or key not in md.IMAGE_KEYS:
        return value
    return f"<{md.describe_image_value(key, value)}>"
