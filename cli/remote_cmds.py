"""Remote store commands: push and pull, and the `--remote [URL]` option list/get/label share.

Each command resolves the remote (flag > TORCHSHELF_REMOTE > shelf.toml), calls one core
function per tag and reports: tags on stdout (so `TAG=$(shelf pull classifier)` works), progress
and per-tag summaries on stderr. Nothing here imports s3fs or torch at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from torchshelf.diskspace import human_size

from .render import stderr, stdout

if TYPE_CHECKING:
    from torchshelf.remote import Remote, Transfer

REMOTE_HELP = "Remote store s3://bucket/prefix; a bare --remote uses TORCHSHELF_REMOTE or [remote] url in shelf.toml."
# `--remote [URL]` of list, get, label, push and pull (with `RemoteFlagCommand`: the URL is optional)
RemoteOption = Annotated[
    str | None,
    typer.Option("--remote", metavar="[URL]", help=REMOTE_HELP, show_default=False),
]


class RemoteFlagCommand(TyperCommand):
    """A command whose `--remote` takes an optional URL.

    Click options need a value, so a `--remote` that is last, or followed by something that is
    not an `s3://`-style URL (an option, a tag, a label), is rewritten to `--remote=` (empty:
    the configured remote). `shelf list --remote classifier` therefore lists `classifier` on
    the configured remote rather than treating the name as a URL.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, optional_remote_value(args))


def optional_remote_value(args: list[str]) -> list[str]:
    """Rewrite a value-less `--remote` to `--remote=` (see `RemoteFlagCommand`)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        if arg == "--remote":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and "://" in nxt:
                out += [arg, nxt]
                i += 2
                continue
            out.append("--remote=")
        else:
            out.append(arg)
        i += 1
    return out


def open_remote(url: str | None) -> Remote:
    """The remote for a `--remote` value: a URL, or ""/None for the configured one."""
    from torchshelf.remote import Remote

    return Remote.from_config(url or None)


def _human_rate(transfer: Transfer) -> str:
    if transfer.seconds <= 0 or not transfer.bytes:
        return human_size(transfer.bytes)
    rate = transfer.bytes / transfer.seconds
    return f"{human_size(transfer.bytes)} in {transfer.seconds:.1f} s, {human_size(int(rate))}/s"


def register(app: typer.Typer) -> None:
    """Add push and pull to the app (list/get/label take `--remote` in store_cmds)."""

    @app.command(rich_help_panel="Remote", cls=RemoteFlagCommand)
    def push(
        tags: Annotated[
            list[str], typer.Argument(help="name, name:latest or name:version; repeatable.")
        ],
        remote: RemoteOption = None,
    ) -> None:
        """Upload versions to the remote store (files first, manifest last); prints each tag."""
        import torchshelf
        from torchshelf.lifecycle import default_store

        from .progress import byte_progress

        rem, store = open_remote(remote), default_store()
        for tag in tags:
            ref = torchshelf.get(tag)
            with byte_progress(f"pushing {ref.tag}", ref.info.size) as progress:
                done = rem.push(store, ref.tag, progress)
            _report(done, "to", rem.url)

    @app.command(rich_help_panel="Remote", cls=RemoteFlagCommand)
    def pull(
        tags: Annotated[
            list[str], typer.Argument(help="name, name:latest or name:version; repeatable.")
        ],
        remote: RemoteOption = None,
    ) -> None:
        """Download versions from the remote store, verifying every sha256; prints each tag."""
        from torchshelf.lifecycle import default_store

        from .progress import byte_progress

        rem, store = open_remote(remote), default_store()
        for tag in tags:
            target = rem.get(tag)
            with byte_progress(f"pulling {target.tag}", target.size) as progress:
                done = rem.pull(store, target.tag, progress)
            _report(done, "from", rem.url)


def _report(done: Any, direction: str, url: str) -> None:
    stdout.print(str(done.tag), highlight=False)
    if done.status == "unchanged":
        what = "already on" if direction == "to" else "already in the local store; same files as"
        stderr.print(f"{done.tag}: {what} {url}, nothing to do", highlight=False)
    else:
        stderr.print(
            f"{done.status} {done.tag} {direction} {url} ({_human_rate(done)})", highlight=False
        )


__all__ = ["register", "RemoteFlagCommand", "optional_remote_value", "open_remote"]
