"""Injected HTTP failures: the next ``remaining`` matching API requests get ``status``."""

from __future__ import annotations

from dataclasses import dataclass

from prefect_comfy_emulator.config import API_PREFIX, V2_PREFIX
from prefect_comfy_emulator.wire import ApiError


@dataclass
class Fault:
    """An injected failure: the next ``remaining`` matching API requests get ``status``."""

    status: int
    remaining: int
    retry_after: float | None = None
    path: str | None = None
    when: str = "before"

    def matches(self, path: str) -> bool:
        if not self.path:
            return True
        relative = path
        for prefix in (API_PREFIX, V2_PREFIX):
            if path.startswith(prefix):
                relative = path[len(prefix) :]
        return path.startswith(self.path) or relative.startswith(self.path)

    def error(self) -> ApiError:
        if self.status == 429:
            headers = {}
            if self.retry_after is not None:
                value = self.retry_after
                headers["Retry-After"] = (
                    str(int(value)) if float(value).is_integer() else str(value)
                )
            return ApiError(429, "rate_limited", "rate limit exceeded (injected)", headers=headers)
        return ApiError(self.status, "internal_error", f"server error {self.status} (injected)")
