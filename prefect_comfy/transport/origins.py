"""Where a Comfy server is: origins, loopback, and the process's one SSL context.

Example:
    >>> normalize_origin("https://cloud.comfy.org/developer/api/v1/")
    'https://cloud.comfy.org'
    >>> is_loopback("127.0.0.2"), is_loopback("localhost"), is_loopback("comfy.invalid")
    (True, True, False)
"""

from __future__ import annotations

import functools
import ipaddress
import ssl

import httpx

from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.redaction import redact
from prefect_comfy.settings import API_PREFIX

__all__ = ["is_loopback", "normalize_origin", "same_origin", "shared_ssl_context"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """The process's one SSL context for Comfy's HTTPS clients (loading one costs ~30 ms).

    Made on first use with httpx's defaults (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as set
    then); pass it as ``verify=`` to any ``httpx.AsyncClient`` that talks to Comfy.
    """
    return httpx.create_ssl_context()


def is_loopback(host: str) -> bool:
    """Whether a host name is this machine: ``localhost``, ``*.localhost``, 127.0.0.0/8 or ``::1``.

    Example:
        >>> is_loopback("127.0.0.2"), is_loopback("localhost"), is_loopback("comfy.invalid")
        (True, True, False)
    """
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port(url: httpx.URL) -> int | None:
    return url.port or _DEFAULT_PORTS.get(url.scheme)


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """Whether two URLs share scheme, host and (effective) port."""
    return (a.scheme, a.host, _port(a)) == (b.scheme, b.host, _port(b))


def normalize_origin(base_url: str) -> str:
    """The origin of a base URL: trailing ``/`` and ``/developer/api/v1`` removed, scheme checked.

    Example:
        >>> normalize_origin("https://cloud.comfy.org/developer/api/v1/")
        'https://cloud.comfy.org'

    Raises:
        ComfyConfigError: the URL is not ``http(s)://host[:port]``.
    """
    value = str(base_url).strip().rstrip("/")
    if value.endswith(API_PREFIX):
        value = value[: -len(API_PREFIX)]
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ComfyConfigError(f"Invalid Comfy base URL {redact(value)!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ComfyConfigError(
            f"Invalid Comfy base URL {redact(value)!r}: expected http(s)://host[:port], such as "
            "https://cloud.comfy.org"
        )
    return value
