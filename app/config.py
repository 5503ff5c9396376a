"""Configuration: one settings object from the environment (prefix ``MOVIEREC_``) and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VAR_DIR = Path("var")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOVIEREC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "production", "test"] = Field(
        "development", description="`production` refuses development-only defaults."
    )
    database_url: str = Field(
        f"sqlite:///{DEFAULT_VAR_DIR / 'movierec.db'}",
        description="SQLAlchemy URL of the store (SQLite by default, PostgreSQL in deployment).",
    )
    model_dir: Path = Field(
        DEFAULT_VAR_DIR / "models", description="Where checkpoints are written."
    )
    data_dir: Path = Field(
        DEFAULT_VAR_DIR / "data", description="Where fetched data sets are kept."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: `auto` picks CUDA when present."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for the admin API; admin routes are closed when unset."
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated bearer keys of the API's user data: when set, every route "
        "that reads or writes a user's data or computes recommendations needs "
        "`Authorization: Bearer <key>` (the catalogue, health and metrics stay open).",
    )
    public_api: bool = Field(
        False,
        description="States that the API is deliberately public: production serves user data "
        "without MOVIEREC_API_KEYS only when this is true.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(False, description="Emit logs as JSON lines.")
    model_poll_seconds: float = Field(
        2.0, description="How often each API process checks for a new active model version."
    )
    worker_poll_seconds: float = Field(1.0, description="How often a worker looks for queued jobs.")
    heartbeat_seconds: float = Field(
        2.0, description="How often a running job beats its heartbeat."
    )
    heartbeat_timeout_seconds: float = Field(
        30.0, description="A running job with no heartbeat for this long is marked failed."
    )
    activation_tolerance: float = Field(
        0.0,
        description="A new model is activated when its validation metric is not worse than the "
        "active model's by more than this (relative, 0.01 = 1 %).",
    )
    max_body_bytes: int = Field(1_000_000, description="Largest accepted request body.")
    keep_alive_seconds: float = Field(
        5.0, gt=0, description="An idle kept-alive connection is closed after this long."
    )
    header_timeout_seconds: float = Field(
        10.0,
        ge=0,
        description="A connection whose request line and headers have not all arrived this long "
        "after it opened (or after the previous response) is closed (0 = no limit).",
    )
    result_memo_size: int = Field(
        2048,
        ge=0,
        description="Recommendation answers of stored users kept per API process and reused for "
        "the same model, parameters and user ratings, as the request's own query read them, so "
        "an answer is never stale (0 = off). Also bounded in bytes: result_memo_bytes.",
    )
    result_memo_bytes: int = Field(
        32 << 20,
        ge=0,
        description="Bytes the result memo of one API process may hold, keys and answers "
        "together (0 = off). An entry holds the user's ratings packed as its key (16 bytes a "
        "rating) and the answer (about 200 bytes a movie): some 2.5 KB for a user with 100 "
        "ratings asking for 10 movies, so the default 32 MiB holds the default 2,048 entries "
        "with room to spare, and a few heavy users cannot grow a process past it.",
    )
    result_memo_carry: int = Field(
        1024,
        ge=0,
        description="Answers of the result memo, most recently used first, computed again with "
        "a new model (or catalogue) before it is swapped in, so that the users who asked "
        "lately do not all go to the model at once after a retrain (0 = none; at most "
        "result_memo_size). Each costs a share of a forward pass: on an idle 2-core host "
        "1,024 answers delay a swap by about 0.5-1 s (more under load), and the old model "
        "serves meanwhile.",
    )
    scoring_thread: bool = Field(
        False,
        description="Run the forward passes on a scoring thread of their own instead of the "
        "event loop's thread (measured slower on small hosts: smaller batches, thread hops).",
    )

    @model_validator(mode="after")
    def _production_refuses_dev_defaults(self) -> Settings:
        if self.environment == "production":
            if self.database_url.startswith("sqlite"):
                raise ValueError("production needs MOVIEREC_DATABASE_URL pointing at PostgreSQL")
            if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
                raise ValueError(
                    "MOVIEREC_ADMIN_TOKEN must be at least 16 characters in production"
                )
            if any(len(key) < 16 for key in self.api_key_list()):
                raise ValueError("every MOVIEREC_API_KEYS key must be at least 16 characters")
        return self

    def api_key_list(self) -> tuple[str, ...]:
        """The configured API keys (empty: user data is open)."""
        if self.api_keys is None:
            return ()
        return tuple(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())

    def check_can_serve(self) -> None:
        """Refuse to serve a production API whose user data would be open by accident."""
        if self.environment == "production" and not self.api_key_list() and not self.public_api:
            raise ValueError(
                "production refuses to serve user data without keys: set MOVIEREC_API_KEYS "
                "(comma-separated, 16+ characters each), or MOVIEREC_PUBLIC_API=true to state "
                "that anyone may read and write every user's ratings"
            )

    def ensure_dirs(self) -> None:
        """Create the local folders the embedded default writes to."""
        if self.database_url.startswith("sqlite:///"):
            path = Path(self.database_url.removeprefix("sqlite:///"))
            if str(path) not in ("", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
        self.model_dir.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
