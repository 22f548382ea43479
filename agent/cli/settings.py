"""Settings in one place: environment variables ``INFERMETER__*`` (nested with ``__``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OpenAISettings", "Settings"]


class OpenAISettings(BaseModel):
    """Defaults of the ``openai`` backend (``INFERMETER__OPENAI__BASE_URL`` …)."""

    base_url: str = "http://127.0.0.1:8000"
    model: str | None = None
    api_key: SecretStr | None = None


class Settings(BaseSettings):
    """Everything infermeter reads from the environment; the API key is never logged or written."""

    model_config = SettingsConfigDict(env_prefix="INFERMETER__", env_nested_delimiter="__", extra="ignore")

    cache_dir: Path = Path.home() / ".cache" / "infermeter"
    log_level: str = "warning"
    log_json: bool = False
    openai: OpenAISettings = OpenAISettings()
