"""The Comfy Cloud developer API: REST client, WebSocket stream, backend and credentials block."""
