"""What the scheduler's commands work with: the settings, and Redis, storage and the asset
library opened on first use (each command touches only what it needs, and imports only that:
``scheduler status`` loads neither boto3 nor the asset library)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from farm.settings import Settings

if TYPE_CHECKING:
    from farm.assets.library import AssetLibrary
    from farm.io.storage import Storage
    from farm.queue.state import FarmState


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
            from farm.queue.state import FarmState, connect

            self._state = FarmState(connect(self.settings.redis_url_with_password))
        return self._state

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            from farm.io.storage import open_storage

            self._storage = open_storage(self.settings)
        return self._storage

    @property
    def library(self) -> AssetLibrary:
        if self._library is None:
            from farm.assets.roots import open_library

            self._library = open_library(self.settings)
        return self._library

    def base(self, segment: int) -> str:
        from farm.io.layout import segment_base

        return segment_base(segment)

    def done_videos(self, segment: int) -> set[str]:
        """Videos whose completion marker exists in storage."""
        from farm.io.layout import MARKERS, join, marker_video

        keys = self.storage.list(join(self.base(segment), MARKERS))
        return {v for v in map(marker_video, keys) if v}
