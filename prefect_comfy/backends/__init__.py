"""Kinds of Comfy server behind one small interface (:class:`~prefect_comfy.backends.base.ComfyBackend`)."""

from prefect_comfy.backends.base import ComfyBackend

__all__ = ["ComfyBackend"]
