"""Reads cached by gallery version: an entry is valid only at the version it was read
at (every write bumps it)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class VersionedCache:
    """A bounded LRU map whose entries are valid only at the gallery version they were
    read at: reading the version (one row) is ~5x cheaper than reading a subject's faces.
    Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Any, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, version: int) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] != version:
                return None
            self._entries.move_to_end(key)
            return found[1]

    def holds(self, key: Any) -> bool:
        """Whether ``key`` was read at some version (current or not)."""
        with self._lock:
            return key in self._entries

    def put(self, key: Any, version: int, value: Any) -> None:
        """Store ``value`` as read at ``version`` (read the version before the value: a
        write in between then leaves the entry already out of date, never wrong)."""
        with self._lock:
            self._entries[key] = (version, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
