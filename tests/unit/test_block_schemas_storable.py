"""Every block schema can be stored by a Prefect server on PostgreSQL as well as on SQLite.

PostgreSQL's JSONB refuses the escape ``\\u0000`` ("unsupported Unicode escape sequence"), and the
server then answers 503 to the block's registration: a NUL anywhere in a schema makes the block
unusable on a PostgreSQL-backed server (found by scripts/try-postgres-workers.sh).
"""

import json

import pytest

from prefect_comfy import ComfyCloudCredentials, ComfyUIServer, ComfyWorkflow


@pytest.mark.parametrize("block", [ComfyCloudCredentials, ComfyUIServer, ComfyWorkflow])
def test_block_schema_has_no_nul(block):
    schema = json.dumps(block.model_json_schema())
    assert "\\u0000" not in schema and "\x00" not in schema


def test_a_saved_block_reference_is_still_told_from_a_block_document():
    """The rule that needs a never-present property still refuses a {"$ref": ...} document."""
    schema = ComfyCloudCredentials.model_json_schema()
    assert schema["if"] == {"required": ["$ref"]}
    (never,) = schema["then"]["required"]
    assert never not in schema["properties"] and never.isprintable()
