"""After start-up, a service freezes its heap: collections skip it, later garbage still goes."""

from __future__ import annotations

import gc
import weakref

from mlbus.core.service import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_startup_objects_leave_collections_and_later_cycles_are_still_collected() -> None:
    before = Node()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert not gc.is_tracked(before) or before not in gc.get_objects(generation=2)
        later = Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None, "a cycle made after the freeze was not collected"
    finally:
        gc.unfreeze()
