"""Waiting for Comfy resources: one shared event stream per server and credentials, fanned out to waits."""
