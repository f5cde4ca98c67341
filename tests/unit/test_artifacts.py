"""Artifacts: keys, bounded data-URL previews, the outputs table, the throttled progress artifact."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid

import pytest

from prefect_comfy.models import Job, Output
from prefect_comfy.orchestration.artifacts import (
    MAX_KEY_LENGTH,
    MAX_PREVIEW_BYTES,
    JobProgressArtifact,
    _previews,
    artifact_key,
    data_url,
    outputs_markdown,
    preview_from_file,
)
from tests.support.memory import MemoryBackend

KEY_RE = re.compile(r"^[a-z0-9-]+$")
SECRET = "comfyui-secret-key-for-unit-tests"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


@pytest.mark.parametrize(
    "job_id",
    [
        "job_abc",
        "JOB-ABC",
        "a/b\\c d",
        "----",
        "",
        "é😀",
        "x" * 300,
        "0f8fad5b-d9cb-469f-a165-70867728950e",
    ],
)
def test_artifact_keys_are_valid(job_id):
    for suffix in (None, "outputs"):
        key = artifact_key("job", job_id, suffix)
        assert KEY_RE.match(key), key
        assert len(key) <= MAX_KEY_LENGTH
        assert key.startswith("comfy-job-")
        if suffix:
            assert key.endswith("-outputs")


def test_artifact_keys_keep_clean_ids_and_stay_distinct():
    assert artifact_key("job", "abc-123") == "comfy-job-abc-123"
    ids = ["job_a", "job-a", "JOB_A", "job a", "x" * 200, "x" * 201]
    keys = {artifact_key("job", i) for i in ids}
    assert len(keys) == len(ids)


def test_data_url_is_bounded():
    assert data_url(PNG, "image/png") == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert data_url(b"x" * MAX_PREVIEW_BYTES, "image/png") is not None
    assert data_url(b"x" * (MAX_PREVIEW_BYTES + 1), "image/png") is None
    assert data_url(PNG, "text/html") is None
    assert data_url(PNG, "image/svg+xml") is None  # scripts can hide in SVG


def test_preview_from_file(tmp_path):
    small = tmp_path / "a.png"
    small.write_bytes(PNG)
    big = tmp_path / "b.png"
    big.write_bytes(b"x" * (MAX_PREVIEW_BYTES + 10))
    assert preview_from_file(small, None).startswith("data:image/png;base64,")
    assert preview_from_file(big, None) is None
    assert preview_from_file(small, "application/octet-stream") is None


def job_with_outputs() -> Job:
    return Job(
        id="job_1",
        status="completed",
        outputs=[
            Output(
                id="o1",
                name="cat|1.png",
                type="image",
                mime_type="image/png",
                size=len(PNG),
                download_url=f"https://store/o1.png?X-Sig=abc&api_key={SECRET}",
            ),
            Output(
                id="o2",
                name="big.png",
                mime_type="image/png",
                size=10**7,
                download_url="https://s/big",
            ),
            Output(id="o3", name="notes.txt", mime_type="text/plain", size=3),
        ],
    )


def test_outputs_markdown(tmp_path):
    job = job_with_outputs()
    md = outputs_markdown(job, job.outputs, {"o1": data_url(PNG, "image/png")})
    assert SECRET not in md
    assert "X-Sig=abc" in md and "api_key=REDACTED" in md
    assert "cat\\|1.png" in md  # a pipe in a name cannot break the table
    assert "](data:image/png;base64," in md
    assert "no preview (over 64 KiB" in md
    assert "no preview (not an image)" in md
    assert md.count("\n| ") == 5  # header, rule, three rows


def test_outputs_markdown_marks_previews_that_were_not_saved():
    job = Job(
        id="j1",
        status="completed",
        outputs=[
            Output(id="o1", name="kept.png", mime_type="image/png"),
            Output(id="o2", name="prev.png", mime_type="image/png", temporary=True),
        ],
    )
    md = outputs_markdown(job, job.outputs, {})
    assert "| kept.png |" in md
    assert "| prev.png (preview, not saved) |" in md


async def test_previews_from_paths_and_bounded_downloads(tmp_path):
    job = job_with_outputs()
    backend = MemoryBackend()
    previews = await _previews(job.outputs, backend=backend, paths={}, max_bytes=MAX_PREVIEW_BYTES)
    assert backend.server.downloads == ["o1"]  # never the big one, never the text file
    assert previews["o1"].startswith("data:image/png")
    local = tmp_path / "cat.png"
    local.write_bytes(PNG)
    backend2 = MemoryBackend()
    previews = await _previews(
        job.outputs, backend=backend2, paths={"o1": local}, max_bytes=MAX_PREVIEW_BYTES
    )
    assert backend2.server.downloads == [] and previews["o1"]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_progress_artifact_is_throttled_and_ends_with_the_final_value():
    clock = Clock()
    calls: list[tuple[str, float]] = []
    descriptions: list[str] = []
    artifact_id = uuid.uuid4()

    async def create(progress, key, description):
        calls.append(("create", progress))
        assert KEY_RE.match(key) and "job 9" in description
        return artifact_id

    async def update(artifact_id, progress, description):
        calls.append(("update", progress))
        descriptions.append(description)

    art = JobProgressArtifact("job_9", interval=1.0, create=create, update=update, clock=clock)
    assert await art.start(0) == artifact_id
    art.offer(10)
    assert art.next_due() == 1.0
    assert await art.flush_due() is False
    clock.now = 0.5
    art.offer(40)
    clock.now = 1.0
    assert await art.flush_due() is True
    art.offer(70)
    art.offer(90)
    clock.now = 1.2
    assert await art.flush_due() is False
    assert await art.finish(100) is True
    assert calls == [("create", 0), ("update", 40), ("update", 100)]
    assert art.written == 100


async def test_an_artifact_first_written_at_the_end_says_its_final_value():
    """A job that ends before the first progress write: the artifact is created by `finish`,
    and its card said '0% · completed' over a value of 100 (seen on the merged tree)."""
    created: list[tuple[float, str]] = []

    async def create(progress, key, description):
        created.append((progress, description))
        return uuid.uuid4()

    async def update(artifact_id, progress, description):
        raise AssertionError("nothing to update: the artifact is created at its final value")

    art = JobProgressArtifact("job_7", create=create, update=update)
    assert await art.finish(100, "completed") is True
    assert created == [(100, "100% · completed · job 7")]


async def test_progress_artifact_description_says_the_value_on_the_ui_card():
    # The UI's artifact card shows the description, not the value: the description says it.
    descriptions: list[str] = []

    async def create(progress, key, description):
        descriptions.append(description)
        return uuid.uuid4()

    async def update(artifact_id, progress, description):
        descriptions.append(description)

    art = JobProgressArtifact("job_9", interval=0, create=create, update=update)
    await art.start(0)
    art.offer(42.7, "KSampler step 12/20")
    await art.flush_due()
    await art.finish(40, outcome="failed")
    # The percentage and the step first: the card cuts the description at about 40 characters.
    assert descriptions == [
        "0% · job 9",
        "42% · KSampler step 12/20 · job 9",
        "40% · failed at KSampler step 12/20 · job 9",
    ]
    art.outcome = None
    await art.finish(100, outcome="completed")
    assert descriptions[-1] == "100% · completed · job 9"
    long_id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    art = JobProgressArtifact(long_id, interval=0, create=create, update=update)
    await art.start(0)
    art.offer(62, "KSampler step 5/8")
    await art.flush_due()
    assert descriptions[-1] == "62% · KSampler step 5/8 · job 0f1e2d3c…"
    assert len(descriptions[-1]) <= 40


def test_artifact_keys_never_repeat_the_kind() -> None:
    # 'comfy-job-job-42-…' said "job" twice (issue 19, item 8).
    assert artifact_key("job", "job_42").startswith("comfy-job-42-")
    assert artifact_key("job", "job_42") != artifact_key("job", "42")
    assert artifact_key("job", "job") == "comfy-job-job"
    assert "job-job" not in artifact_key("job", "job-7", "outputs")


async def test_progress_artifact_failure_never_raises(caplog):
    async def create(**kwargs):
        raise RuntimeError("no server")

    art = JobProgressArtifact("j", create=create, update=create)
    assert await art.start() is None
    art.offer(50)
    assert await art.finish(100) is False
    assert "not written" in caplog.text


def test_the_heading_shows_the_job_id_as_it_is() -> None:
    """Backslash escapes show literally inside a code span, so the id is not escaped there."""
    from prefect_comfy.models import Job
    from prefect_comfy.orchestration.artifacts import outputs_markdown

    text = outputs_markdown(Job(id="job_a_b", status="completed"), [], {})
    assert "## Outputs of Comfy job `job_a_b`" in text


async def test_progress_writes_share_a_few_slots_and_a_waiting_one_sends_the_latest_value():
    """Issue 21 section 4: many waits on one loop never have more than
    ``PROGRESS_WRITES_IN_FLIGHT`` progress writes in flight (a slow Prefect API gets fewer writes,
    not a pile of them), and a write that waited for its slot sends the value held by then."""
    import asyncio

    from prefect_comfy.orchestration.artifacts import PROGRESS_WRITES_IN_FLIGHT

    gate = asyncio.Event()
    in_flight = most = 0
    written: dict[str, list[float]] = {}

    async def create(progress, key, description):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await gate.wait()
        finally:
            in_flight -= 1
        written.setdefault(key, []).append(progress)
        return uuid.uuid4()

    arts = [
        JobProgressArtifact(f"job_{i}", interval=0, create=create, update=create)
        for i in range(3 * PROGRESS_WRITES_IN_FLIGHT)
    ]
    for art in arts:
        art.offer(10)
    flushes = [asyncio.ensure_future(art.flush_due()) for art in arts]
    for _ in range(20):
        await asyncio.sleep(0)
    assert in_flight == PROGRESS_WRITES_IN_FLIGHT
    for art in arts:
        art.offer(55)  # while waiting for a slot (or in flight): the newer value
    gate.set()
    assert all(await asyncio.gather(*flushes))
    assert most == PROGRESS_WRITES_IN_FLIGHT
    waited = arts[-1]
    assert written[waited.key] == [55]  # one write, of the latest value


# -- the live preview -------------------------------------------------------------------------------
async def test_live_preview_is_rate_limited_budgeted_and_newest_wins() -> None:
    from prefect_comfy.orchestration.artifacts import JobPreviewArtifact
    from prefect_comfy.orchestration.events.budget import ProgressBudget

    now = [0.0]
    written: list[dict] = []

    async def create(**kwargs):
        written.append(kwargs)
        return uuid.uuid4()

    budget = ProgressBudget(1, clock=lambda: now[0])
    preview = JobPreviewArtifact(
        "job_1", interval=3.0, create=create, budget=budget, clock=lambda: now[0]
    )
    assert preview.key == artifact_key("job", "job_1", "outputs")  # the outputs table replaces it
    assert preview.next_due() is None  # nothing held
    preview.offer(b"\x89PNG-old", "image/png")
    preview.offer(b"\x89PNG-new", "image/png", where="KSampler step 3/8")
    assert await preview.flush_due()
    [first] = written
    assert base64.b64encode(b"\x89PNG-new").decode() in first["markdown"]
    assert "KSampler step 3/8" in first["markdown"] and first["key"] == preview.key
    preview.offer(b"\x89PNG-2", "image/png")
    assert preview.next_due() == 3.0 and not await preview.flush_due()  # within the interval
    now[0] = 3.0
    assert budget.try_acquire()  # someone else took the second's only event
    assert not await preview.flush_due() and len(written) == 1  # no room: the next turn
    now[0] = 6.5
    assert await preview.flush_due() and len(written) == 2
    preview.offer(b"x" * (300 * 1024), "image/png")  # too big: never held
    preview.offer(b"GIF", "text/plain")  # not an image
    assert preview.next_due() is None
    preview.offer(b"\x89PNG-3", "image/png")
    preview.discard()  # the job ended: its outputs replace it
    assert preview.next_due() is None


async def test_the_watch_sends_previews_to_the_artifact_never_to_events() -> None:
    import logging

    from prefect_comfy.models import ComfyEvent
    from prefect_comfy.orchestration.artifacts import JobPreviewArtifact
    from prefect_comfy.orchestration.sensor import _JobWatch

    class Emitter:
        def __init__(self) -> None:
            self.events: list = []

        def progress(self, event) -> None:
            self.events.append(event)

    emitter = Emitter()
    preview = JobPreviewArtifact("j1", create=None)
    watch = _JobWatch("j1", emitter, None, logging.getLogger("test"), preview)  # type: ignore[arg-type]
    image = base64.b64encode(b"\x89PNG").decode()
    watch.on_progress(
        ComfyEvent(
            event="job.preview", payload={"id": "j1", "mime_type": "image/png", "image": image}
        )
    )
    assert emitter.events == [] and preview.next_due() == 0.0


async def test_final_writes_are_bounded_latest_wins_and_flushed():
    """orchestration.writes: at most ``in_flight`` at once; a key's write not started yet is
    replaced by a later one; a write that raises is logged, the others go on; flush waits."""
    from prefect_comfy.orchestration.writes import ArtifactWrites

    writes = ArtifactWrites(in_flight=2)
    running, most, done = 0, 0, []
    gate = asyncio.Event()

    async def write(key: str, value: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        if value < 0:
            raise RuntimeError("503")
        done.append((key, value))

    for n in range(6):
        writes.submit(f"k{n}", lambda n=n: write(f"k{n}", n))
    writes.submit("k5", lambda: write("k5", 50))  # k5 has not started: only 50 goes out
    writes.submit("k4", lambda: write("k4", -1))  # nor k4: its failure is logged, not raised
    await asyncio.sleep(0)
    assert writes.pending == 6
    gate.set()
    assert await writes.flush(timeout=5)
    assert most == 2
    assert sorted(done) == [("k0", 0), ("k1", 1), ("k2", 2), ("k3", 3), ("k5", 50)]
    assert writes.pending == 0
