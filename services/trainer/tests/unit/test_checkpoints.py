"""A job's checkpoint directory and its copy in a real (local) object store: what is
copied, what is skipped, what a later attempt gets back, and that an ended job's copy goes."""

from __future__ import annotations

import os
from pathlib import Path

from mlbus.core.settings import StorageSettings
from mlbus.core.storage import create_object_store
from mlbus.trainer.adapters.checkpoints import StoreCheckpoints


async def test_changes_are_copied_and_a_later_attempt_gets_them_back(tmp_path: Path) -> None:
    store = create_object_store(StorageSettings(root=tmp_path / "objects"))
    await store.start()
    try:
        checkpoints = StoreCheckpoints(store)
        first = checkpoints.mirror("job-1", tmp_path / "attempt-1")
        assert await first.restore() == 0
        local = tmp_path / "attempt-1"
        (local / "model.bin").write_bytes(b"weights 1")
        (local / "optimizer").mkdir()
        (local / "optimizer" / "state.json").write_text("{}")
        (local / "half-written.tmp").write_text("...")
        (local / ".lock").write_text("")
        assert await first.sync() == 2
        assert await first.sync() == 0  # nothing changed
        (local / "model.bin").write_bytes(b"weights 2, longer")
        (local / "optimizer" / "state.json").unlink()
        assert await first.sync() == 2
        keys = [store.key_for(i.uri) async for i in store.list("trainer-checkpoints/")]
        assert keys == ["trainer-checkpoints/job-1/model.bin"]

        again = checkpoints.mirror("job-1", tmp_path / "attempt-2")
        assert again.uri == store.uri_for_prefix("trainer-checkpoints/job-1/")
        assert await again.restore() == 1
        assert sorted(os.listdir(tmp_path / "attempt-2")) == ["model.bin"]
        assert (tmp_path / "attempt-2" / "model.bin").read_bytes() == b"weights 2, longer"
        assert await again.sync() == 0  # what was restored is not copied back

        await checkpoints.discard("job-1")
        assert [i async for i in store.list("trainer-checkpoints/")] == []
        assert await checkpoints.mirror("job-1", tmp_path / "attempt-3").restore() == 0
    finally:
        await store.aclose()
