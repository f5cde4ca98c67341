"""Kinds of Comfy server behind one small interface (`ComfyBackend`)."""

from prefect_comfy.backends.base import ComfyBackend

__all__ = ["ComfyBackend"]
