"""Farm settings from the environment (never from code): Redis, storage, assets, retries.

Secrets may be given directly or through a file named by ``<VAR>_FILE`` (Docker secrets), not both:
``REDIS_PASSWORD``/``REDIS_PASSWORD_FILE``, ``AWS_ACCESS_KEY_ID``/``AWS_ACCESS_KEY_ID_FILE``,
``AWS_SECRET_ACCESS_KEY``/``AWS_SECRET_ACCESS_KEY_FILE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from farm.io.storage import LocalStorage, S3Storage, Storage
from farm.secrets import SecretError, read_secret


class ConfigError(ValueError):
    """A setting is missing or malformed."""


def secret(name: str) -> str | None:
    """``$NAME``, or the contents of the file named by ``$NAME_FILE``; both set is an error
    (farm/secrets.py says why)."""
    try:
        return read_secret(name)
    except SecretError as exc:
        raise ConfigError(str(exc)) from None


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class Settings:
    redis_url: str
    storage_url: str
    s3_endpoint: str | None
    models: Path | None
    textures: Path | None
    scratch: Path
    seed: int
    max_deliveries: int  # deliveries of one video (worker lost, crash) before it is marked failed
    max_retries: int  # transient-error retries (storage, broker) per delivery
    retry_backoff_max: int  # seconds
    lease_ttl: int  # seconds a video/GPU lease lives without a heartbeat
    denylist: Path | None = None  # assets spec generation skips (python -m farm assets check)
    stream_upload: bool = True  # upload each frame while the rest of the video renders

    @property
    def redis_url_with_password(self) -> str:
        """The Redis URL with REDIS_PASSWORD inserted when the URL carries none."""
        password = secret("REDIS_PASSWORD")
        parts = urlsplit(self.redis_url)
        if not password or parts.password:
            return self.redis_url
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit(parts._replace(netloc=f":{quote(password, safe='')}@{host}"))

    def storage(self) -> tuple[Storage, str]:
        """(storage, base prefix). ``s3://bucket/prefix`` or a local path / ``file://`` URL."""
        url = self.storage_url
        if url.startswith("s3://"):
            parts = urlsplit(url)
            if not parts.netloc:
                raise ConfigError(f"FARM_STORAGE_URL={url!r} has no bucket")
            return S3Storage(parts.netloc, parts.path.strip("/"), endpoint_url=self.s3_endpoint,
                             region=os.environ.get("AWS_DEFAULT_REGION"),
                             access_key=secret("AWS_ACCESS_KEY_ID"),
                             secret_key=secret("AWS_SECRET_ACCESS_KEY")), ""
        if url.startswith("file://"):
            url = urlsplit(url).path
        return LocalStorage(url), ""

    def asset_roots(self) -> tuple[Path, Path]:
        if self.models and self.textures:
            return self.models, self.textures
        from farm.assets.procedural import default_pack

        return default_pack()

    def library(self):
        """The asset library with the denylist applied (scheduler and workers must agree)."""
        from farm.assets.library import AssetLibrary, read_denylist

        return AssetLibrary.open(*self.asset_roots(), denylist=read_denylist(self.denylist))


def load_settings() -> Settings:
    env = os.environ.get
    models, textures = env("FARM_MODELS"), env("FARM_TEXTURES")
    if bool(models) != bool(textures):
        raise ConfigError("set both FARM_MODELS and FARM_TEXTURES, or neither (procedural pack)")
    return Settings(
        redis_url=env("FARM_REDIS_URL", "redis://127.0.0.1:6379/0"),
        storage_url=env("FARM_STORAGE_URL", "farm-output"),
        s3_endpoint=env("FARM_S3_ENDPOINT") or None,
        models=Path(models) if models else None,
        textures=Path(textures) if textures else None,
        scratch=Path(env("FARM_SCRATCH", "/tmp/farm-scratch")),
        seed=_int("FARM_SEED", 2021),
        max_deliveries=_int("FARM_MAX_DELIVERIES", 3),
        max_retries=_int("FARM_MAX_RETRIES", 8),
        retry_backoff_max=_int("FARM_RETRY_BACKOFF_MAX", 600),
        lease_ttl=_int("FARM_LEASE_TTL", 90),
        denylist=Path(env("FARM_DENYLIST")) if env("FARM_DENYLIST") else None,
        stream_upload=_int("FARM_STREAM_UPLOAD", 1) != 0,
    )


def segment_base(segment: int) -> str:
    """Storage prefix of a segment: ``<segment>/`` under the storage URL's prefix."""
    return str(segment)
