"""Temporary (preview) outputs: told apart from saved ones, and left out of downloads unless asked for."""

from __future__ import annotations

from prefect_comfy.models import Job, Output
from prefect_comfy.orchestration.job_steps import download_outputs
from prefect_comfy.orchestration.jobs import ComfyJobRun
from prefect_comfy.orchestration.results import to_download
from tests.support.memory import MemoryBackend

SAVED = Output(id="p:9:kept.png", name="kept.png", type="image", download_url="http://x/a")
PREVIEW = Output(id="p:3:prev.png", name="prev.png", type="image", temporary=True)
JOB = Job(id="p", status="completed", outputs=[PREVIEW, SAVED])


def test_output_is_saved_unless_marked():
    assert Output(id="o").temporary is False
    assert to_download(JOB.outputs) == [SAVED]
    assert to_download(JOB.outputs, include_temporary=True) == [PREVIEW, SAVED]


async def test_download_leaves_previews_out_but_lists_them(tmp_path):
    backend = MemoryBackend()
    files = await download_outputs(backend, JOB, tmp_path)
    assert backend.server.downloads == [SAVED.id]
    assert [(f.id, f.temporary, f.path) for f in files] == [
        (PREVIEW.id, True, None),
        (SAVED.id, False, tmp_path / "kept.png"),
    ]


async def test_download_previews_when_asked(tmp_path):
    backend = MemoryBackend()
    files = await download_outputs(backend, JOB, tmp_path, include_temporary=True)
    assert backend.server.downloads == [PREVIEW.id, SAVED.id]
    assert all(f.path is not None for f in files)


def test_flow_result_pairs_paths_with_saved_outputs_only(tmp_path):
    # the flow's result is the job block's: download_comfy_outputs returns the saved outputs' paths
    run = ComfyJobRun(block=None, job=JOB)  # type: ignore[arg-type]
    result = run._result([tmp_path / "kept.png"])
    assert [(o.id, o.temporary, o.path) for o in result.outputs] == [
        (PREVIEW.id, True, None),
        (SAVED.id, False, tmp_path / "kept.png"),
    ]
    assert result.paths == [tmp_path / "kept.png"]
    assert [o.id for o in result.saved] == [SAVED.id]
