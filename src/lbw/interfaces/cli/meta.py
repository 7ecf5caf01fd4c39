"""``lbw meta FILE``: show a LoRA's metadata and hashes; with any setting option, edit them.

Only the header is rewritten: other keys kept, tensor bytes identical, ``sshs_*`` hashes recomputed, atomic
write, ``<file>.backup`` kept once (``--no-backup`` to skip), ``-o OUT`` to write a copy instead. A symbolic link
is followed (the file it points to is edited, the link kept); a hard-linked file needs ``--hardlinks``.

Example:
    $ lbw meta gobuhime.safetensors
    $ lbw meta gobuhime.safetensors --name Gobuhime --author me --rating 8 --cover cover.jpg
    $ lbw meta gobuhime.safetensors --weights "Gobuhime:1,1,1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1" --sidecar
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lbw.domain.text import json_text
from lbw.errors import LbwError
from lbw.interfaces.cli.safe import shown

if TYPE_CHECKING:
    from lbw.services.meta import MetaEditResult, MetaView

VALUE_WIDTH = 100  # longer values are cut in the terminal unless --full (never in --json)
_GROUP_TITLES = {
    "user": "user (Additional Networks ssmd_*)",
    "modelspec": "modelspec",
    "lbw": "lbw (tuned block weights)",
    "training": "training (sd-scripts ss_*)",
    "other": "other",
}


def register(app: typer.Typer) -> None:
    """Add ``lbw meta`` to ``app``."""
    app.command("meta")(meta_command)


def meta_command(
    file: Path = typer.Argument(..., help="LoRA file (.safetensors)."),
    name: str | None = typer.Option(None, "--name", "--set-name", help="Display name (ssmd_display_name)."),
    author: str | None = typer.Option(None, "--author", help="Author (ssmd_author and modelspec.author)."),
    source: str | None = typer.Option(None, "--source", help="Source URL (ssmd_source)."),
    keywords: str | None = typer.Option(None, "--keywords", help="Activation keywords, comma-separated."),
    description: str | None = typer.Option(
        None, "--description", help="Description (ssmd_description and modelspec.description)."),
    rating: int | None = typer.Option(None, "--rating", help="Rating 0-10 (ssmd_rating)."),
    tags: str | None = typer.Option(None, "--tags", help="Tags, comma-separated (ssmd_tags and modelspec.tags)."),
    cover: Path | None = typer.Option(None, "--cover", help="Cover PNG/JPEG (ssmd_cover_images, stored as PNG)."),
    title: str | None = typer.Option(None, "--title", help="modelspec.title."),
    trigger: str | None = typer.Option(None, "--trigger", help="Trigger phrase (modelspec.trigger_phrase)."),
    usage_hint: str | None = typer.Option(None, "--usage-hint", help="modelspec.usage_hint."),
    license_: str | None = typer.Option(None, "--license", help="modelspec.license."),
    thumbnail: Path | None = typer.Option(None, "--thumbnail", help="PNG/JPEG as modelspec.thumbnail data URL."),
    weights: str | None = typer.Option(
        None, "--weights", help='Tuned block weights "NAME:v1,...,vN" or a sheet file (.toml) (lbw_block_weights, '
        'lbw_block_layout).'),
    project: str | None = typer.Option(None, "--project", help="Record this project's sheet as the weights."),
    workspace: Path = typer.Option(Path("lbw-workspace"), "--workspace", envvar="LBW_WORKSPACE",
                                   help="Workspace folder of the projects (or LBW_WORKSPACE)."),
    set_keys: list[str] = typer.Option([], "--set", help="Set any key: KEY=VALUE (repeatable)."),
    unset: list[str] = typer.Option([], "--unset", help="Remove a key (repeatable)."),
    sidecar: bool = typer.Option(False, "--sidecar", help="Write/update the web UI sidecar <name>.json."),
    activation_text: str | None = typer.Option(
        None, "--activation-text", help="Sidecar activation text (default: trigger phrase or keywords)."),
    preferred_weight: float | None = typer.Option(None, "--preferred-weight", help="Sidecar preferred weight."),
    notes: str | None = typer.Option(None, "--notes", help="Sidecar notes."),
    negative_text: str | None = typer.Option(None, "--negative-text", help="Sidecar negative text."),
    sd_version: str | None = typer.Option(
        None, "--sd-version", help="Sidecar sd version: SD1, SD2, SDXL, SD3, Unknown (default: from metadata)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Write a new file instead of editing in place."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing -o file."),
    no_backup: bool = typer.Option(False, "--no-backup", help="Do not keep <file>.backup on in-place edits."),
    rehash: bool = typer.Option(False, "--rehash", help="Rewrite even without changes (refresh stale hashes)."),
    hardlinks: str = typer.Option(
        "refuse", "--hardlinks", help="A file with several hard links: refuse, in-place (every name sees the "
        "edit) or split (only this name gets the edited file)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    full: bool = typer.Option(False, "--full", help="Show long values in full."),
) -> None:
    """Show metadata and hashes; any setting option edits the file (header only, tensors untouched)."""
    from lbw.services.meta import MetaChanges, SidecarChanges, edit_meta, show_meta

    if project is not None or (weights is not None and weights.strip().lower().endswith(".toml")):
        from lbw.services.projects import weights_text

        weights = weights_text(weights, project=project, workspace=workspace)
    changes = MetaChanges(
        display_name=name, author=author, source=source, keywords=keywords, description=description,
        rating=rating, tags=tags, cover=cover, title=title, trigger_phrase=trigger, usage_hint=usage_hint,
        license=license_, thumbnail=thumbnail, weights=weights, set_keys=_pairs(set_keys), unset=tuple(unset),
    )
    side = SidecarChanges(activation_text, preferred_weight, notes, negative_text, sd_version)
    wants_sidecar = sidecar or any(v is not None for v in vars(side).values())
    if changes.is_empty() and not wants_sidecar and out is None and not rehash:
        view = show_meta(file)
        if as_json:
            typer.echo(json_text(view.to_json(), indent=2))
        else:
            show_view(view, full=full)
        return
    if hardlinks not in ("refuse", "in-place", "split"):
        raise typer.BadParameter("expected refuse, in-place or split", param_hint="--hardlinks")
    result = edit_meta(file, changes, out=out, backup=not no_backup, force=force, rehash=rehash,
                       sidecar=side if wants_sidecar else None, hardlinks=hardlinks)  # type: ignore[arg-type]
    for warning in result.warnings:
        typer.echo(f"lbw: warning: {shown(warning)}", err=True)
    if as_json:
        typer.echo(json_text(result.to_json(), indent=2))
    else:
        show_result(file, result, full=full)


def show_view(view: MetaView, *, full: bool = False) -> None:
    """Print hashes, the metadata groups and the sidecar."""
    from lbw.files.metadata import IMAGE_KEYS, describe_image_value, group_metadata

    typer.echo(shown(view.path))
    typer.echo("hashes")
    for label, stored, computed in (("sshs_model_hash", "stored", "computed"),
                                    ("sshs_legacy_hash", "legacy_stored", "legacy_computed")):
        stored_value, computed_value = view.hashes[stored], view.hashes[computed]
        if stored_value is None:
            verdict = "not stored"
        elif stored_value == computed_value:
            verdict = "ok"
        else:
            verdict = "MISMATCH (stale; `lbw meta FILE --rehash` rewrites it)"
        typer.echo(f"  {label:<22}{shown(stored_value or '-'):<66}computed {shown(computed_value)}  {verdict}")
    groups = group_metadata(view.metadata)
    for group, title in _GROUP_TITLES.items():
        if not groups[group]:
            continue
        typer.echo(title)
        width = max(len(shown(key)) for key in groups[group]) + 2
        for key, value in groups[group].items():
            text = f"<{describe_image_value(key, value)}>" if key in IMAGE_KEYS else _cut(value, full)
            typer.echo(f"  {shown(key):<{width}}{shown(text)}")
    if view.sidecar is None:
        typer.echo(f"sidecar {shown(view.sidecar_path.name)}: none")
    else:
        typer.echo(f"sidecar {shown(view.sidecar_path.name)}: {json_text(view.sidecar)}")


def show_result(file: Path, result: MetaEditResult, *, full: bool = False) -> None:
    """Print what was written and each changed key as old -> new."""
    from lbw.files.metadata import IMAGE_KEYS, describe_image_value

    if result.path is None:
        typer.echo(f"{shown(file)}: no metadata change; file not rewritten")
    else:
        kept = f" (backup: {shown(result.backup)})" if result.backup else ""
        through = f" (through the link {shown(result.link)})" if result.link else ""
        typer.echo(f"wrote {shown(result.path)}{through}{kept}")

    def show(key: str, value: str | None) -> str:
        if value is None:
            return "(absent)"
        return f"<{describe_image_value(key, value)}>" if key in IMAGE_KEYS else repr(_cut(value, full))

    for key, (old, new) in result.changes.items():
        typer.echo(f"  {shown(key)}: {shown(show(key, old))} -> {shown(show(key, new))}")
    if result.path is not None:
        stored = result.hashes["sshs_model_hash"]
        state = "changed" if "sshs_model_hash" in result.changes else "unchanged"
        typer.echo(f"  sshs_model_hash {shown(stored)} ({state}; equals the hash of the written file)")
    if result.sidecar is not None:
        typer.echo(f"wrote sidecar {shown(result.sidecar)}: {json_text(result.sidecar_content)}")


def _pairs(items: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LbwError(f"--set expects KEY=VALUE, found {item!r}")
        pairs[key.strip()] = value
    return pairs


def _cut(value: str, full: bool) -> str:
    if full:
        return value
    shown = " ".join(value.split())  # one line per key: multi-line JSON is folded
    return shown if len(shown) <= VALUE_WIDTH else f"{shown[:VALUE_WIDTH]}… ({len(value):,} chars)"
