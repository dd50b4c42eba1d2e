"""Inputs of a job made local, with their SHA-256: local files are read where they are
(and hashed); object-store URIs (``s3://...``, or ``file://`` URIs of the store) are
downloaded into the job's working directory."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlbus.core.errors import MlbusError
from mlbus.core.storage import ObjectStore

_BLOCK = 1024 * 1024


class StagingError(Exception):
    """An input cannot be read; the message is the job's FAILED reason."""


@dataclass(frozen=True, slots=True)
class Staged:
    """A job input on local disk."""

    uri: str
    path: Path
    sha256: str
    size: int


def local_path(uri: str) -> Path | None:
    """The file a plain path or ``file://`` URI names; None for other schemes."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        return None
    return Path(uri).expanduser()


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


class DatasetStager:
    """Makes job inputs local (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def stage(self, uri: str, into: Path, what: str) -> Staged:
        """``uri`` as a local file; StagingError naming ``what`` when it cannot be read."""
        path = local_path(uri)
        if path is not None:
            if not path.is_file():
                raise StagingError(f"{what} {uri}: no such file")
            try:
                sha256, size = await asyncio.to_thread(_hash_file, path)
            except OSError as exc:
                raise StagingError(f"{what} {uri}: cannot be read: {exc}") from exc
            return Staged(uri, path.resolve(), sha256, size)
        name = Path(urlparse(uri).path).name or "input"
        await asyncio.to_thread(into.mkdir, parents=True, exist_ok=True)
        target = into / f"{what.replace(' ', '-')}-{name}"
        digest = hashlib.sha256()
        size = 0
        try:
            with target.open("wb") as handle:
                async for chunk in self.store.get(uri):
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
        except MlbusError as exc:
            raise StagingError(f"{what} {uri}: {exc.message}") from exc
        return Staged(uri, target, digest.hexdigest(), size)


async def code_version(script: Path | None, mlbus_version: str) -> str:
    """The git commit of the script's repository (``+dirty`` if the script differs from
    it), else ``sha256:<script hash>``; for built-ins ``mlbus-trainer <version>``."""
    if script is None:
        return f"mlbus-trainer {mlbus_version}"

    async def git(*args: str) -> str | None:
        try:
            process = await asyncio.create_subprocess_exec(
                "git",
                "-C",
                str(script.parent),
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return None
        out, _ = await process.communicate()
        return out.decode().strip() if process.returncode == 0 else None

    commit = await git("rev-parse", "HEAD")
    if commit:
        changed = await git("status", "--porcelain", "--", script.name)
        return f"git:{commit}{'+dirty' if changed else ''}"
    sha256, _ = await asyncio.to_thread(_hash_file, script)
    return f"sha256:{sha256}"
