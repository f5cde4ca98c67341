"""Talking to a Comfy server: the HTTP session, error translation, transfers, retries and time limits.

Nothing here knows which kind of Comfy server it talks to; the backends configure it.
"""
