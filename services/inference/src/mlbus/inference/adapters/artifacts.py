"""Fetching the model artifact from the object store, checksum verified."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mlbus.core.settings import StorageSettings
from mlbus.core.storage import IntegrityError, ObjectStore, open_object_store
from mlbus.inference.domain.errors import ModelLoadError

#: Opens the configured object store (started); tests may pass another opener.
StoreOpener = Callable[[StorageSettings], Awaitable[ObjectStore]]


async def fetch_artifact(
    settings: StorageSettings,
    uri: str,
    sha256: str,
    *,
    open_store: StoreOpener = open_object_store,
) -> bytes:
    """The artifact's bytes, only once their SHA-256 matched ``sha256``.

    Any failure (store unreachable, object missing, checksum mismatch) is a ModelLoadError
    naming the URI and the cause; no byte of a mismatching artifact is returned.
    """
    try:
        store = await open_store(settings)
    except Exception as exc:
        raise ModelLoadError(f"artifact {uri}: cannot open the object store: {exc}") from exc
    try:
        return await store.read_bytes(uri, expected_sha256=sha256)
    except IntegrityError as exc:
        got = exc.details.get("sha256", "another value")
        raise ModelLoadError(
            f"artifact {uri}: checksum mismatch: expected sha256 {sha256}, got {got}; "
            "refusing to serve it",
            details={"uri": uri, "expected_sha256": sha256, "sha256": got},
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"artifact {uri}: {exc}") from exc
    finally:
        await store.aclose()
