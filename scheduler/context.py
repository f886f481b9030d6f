"""What the scheduler's commands work with: the settings, and Redis, storage and the asset
library opened on first use (each command touches only what it needs)."""

from __future__ import annotations

from farm.assets.library import AssetLibrary
from farm.assets.roots import open_library
from farm.io.layout import MARKERS, join, marker_video, segment_base
from farm.io.storage import Storage, open_storage
from farm.queue.state import FarmState, connect
from farm.settings import Settings


class Context:
    """Lazily opened services."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._state: FarmState | None = None
        self._storage = None
        self._library = None

    @property
    def state(self) -> FarmState:
        if self._state is None:
            self._state = FarmState(connect(self.settings.redis_url_with_password))
        return self._state

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage

    @property
    def library(self) -> AssetLibrary:
        if self._library is None:
            self._library = open_library(self.settings)
        return self._library

    def base(self, segment: int) -> str:
        return segment_base(segment)

    def done_videos(self, segment: int) -> set[str]:
        """Videos whose completion marker exists in storage."""
        keys = self.storage.list(join(self.base(segment), MARKERS))
        return {v for v in map(marker_video, keys) if v}
