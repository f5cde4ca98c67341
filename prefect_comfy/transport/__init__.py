"""Talking to a Comfy server: the one HTTP session, error translation, downloads, retries, time limits.

``http.py`` (the session), ``dialect.py`` (what differs per kind of server, as data), ``errors.py``
(the one translation into the error tree), ``download.py`` (the one streaming download) and
``origins.py`` know no particular server: each backend configures them with its ``Dialect``.
``session.py`` and ``transfer.py`` are the developer API's calls on top (the Cloud dialect), shared
by the Cloud backend's client.
"""
