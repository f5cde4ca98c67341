"""The ids a ComfyUI backend submits and listens with, derived rather than stored.

ComfyUI sends a prompt's execution messages only to the socket of the ``clientId`` that submitted it.
Every backend of a process therefore derives the same client id for a server and key
(`process_client_id`), so the waiting layer's one socket sees every job the process submitted;
a forked child derives ids of its own. Prompt ids for an idempotency key are uuid5s in
`IDEMPOTENCY_NAMESPACE`, so a retried submit names the same prompt.
"""

from __future__ import annotations

import hashlib
import os
import uuid

__all__ = ["IDEMPOTENCY_NAMESPACE", "key_hash", "process_client_id"]

IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0f7c2e-61a4-5d8e-9c3b-0e2a4f6d8c10")
"""uuid5 namespace of prompt ids derived from idempotency keys."""


_PROCESS_NAMESPACE = uuid.uuid4()


def _new_process_namespace() -> None:
    global _PROCESS_NAMESPACE
    _PROCESS_NAMESPACE = uuid.uuid4()


os.register_at_fork(after_in_child=_new_process_namespace)


def process_client_id(origin: str, key_hash: str) -> str:
    """The client id every backend of this process uses for a server: derived, not stored.

    ComfyUI sends a prompt's execution messages only to the socket of the client id that submitted
    it, so the waiting layer's one socket must use the id the process submits with. A forked child
    gets ids of its own.
    """
    return f"prefect-comfy-{uuid.uuid5(_PROCESS_NAMESPACE, f'{origin}#{key_hash}')}"


def key_hash(key: str | None) -> str:
    """A short digest of an API key (never the key) that names it in ids and keys."""
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "nokey"
