"""prefect-comfy."""
