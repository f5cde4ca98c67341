"""A self-hosted ComfyUI (or Comfy Cloud's ComfyUI-compatible API): HTTP, stream, mapping, backend, block."""
