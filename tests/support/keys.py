"""The API keys the tests use (obvious placeholders, never real keys)."""

API_KEY = "comfyui-test-key-not-real"
"""The key the emulator accepts in tests."""
OTHER_KEY = "comfyui-second-test-key"
"""A second accepted key, for tests of per-credentials sharing."""
WRONG_KEY = "comfyui-wrong-key-for-tests"
"""A key the emulator refuses."""
