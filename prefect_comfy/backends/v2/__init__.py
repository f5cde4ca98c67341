"""Comfy API v2: Comfy Cloud, serverless deployments and comfy-api-proxy, as one backend."""
