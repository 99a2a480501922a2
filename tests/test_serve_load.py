"""A bounded loopback load test of `cropseg serve` (a subprocess on 127.0.0.1, so its RSS is its own).

After a warm-up round of the same size (the server's allocator and caches settle over a full round: after
a 100-upload warm-up the next round still grew 20 to 40 MiB, later rounds a few MiB), 200 concurrent
small-scene uploads against a queue of 40 (so 429s are exercised) and 2,000 status polls. Only designed
answers are allowed (202, 429 with Retry-After, 200 for polls), every accepted job must succeed, and the
server's RSS must not grow over the load round.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from test_serve import ProcessServer, make_model, scene_upload

from cropseg.testing import write_test_scene

JOBS = 200
POLLS = 2_000
QUEUE = 40


@pytest.fixture(scope="module")
def load_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessServer, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("load")
    files = write_test_scene(root / "data" / "scene")
    make_model(root / "models" / "knn", files["image"])
    server = ProcessServer(root, root / "work", "--workers", "2", "--queue-size", str(QUEUE))
    try:
        yield server, files
    finally:
        server.stop(signal.SIGTERM)
        server.stop(signal.SIGKILL)


async def _round(url: str, payload: dict[str, Any], jobs: int, polls: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        answers = await asyncio.gather(
            *(client.post("/jobs", data={"model": "knn"}, files=payload) for _ in range(jobs))
        )
        statuses = Counter(r.status_code for r in answers)
        assert set(statuses) <= {202, 429}, {r.status_code: r.text for r in answers if r.status_code not in (202, 429)}
        for r in answers:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["detail"]
        accepted = [r.json()["id"] for r in answers if r.status_code == 202]
        assert len(accepted) >= QUEUE

        gate = asyncio.Semaphore(64)

        async def poll(job_id: str) -> dict[str, Any]:
            async with gate:
                r = await client.get(f"/jobs/{job_id}")
            assert r.status_code == 200, r.text
            job: dict[str, Any] = r.json()
            return job

        poll_start = time.perf_counter()
        seen = await asyncio.gather(*(poll(accepted[i % len(accepted)]) for i in range(polls)))
        poll_seconds = time.perf_counter() - poll_start
        assert all(j["state"] in ("queued", "running", "succeeded") for j in seen), [
            (j["state"], j["error"]) for j in seen if j["state"] not in ("queued", "running", "succeeded")
        ][:3]

        deadline = time.monotonic() + 120
        while True:
            listing = (await client.get("/jobs", params={"limit": 1000})).json()["jobs"]
            by_id = {j["id"]: j for j in listing}
            assert all(by_id[i]["state"] != "failed" for i in accepted), [by_id[i]["error"] for i in accepted][:3]
            if all(by_id[i]["state"] == "succeeded" for i in accepted):
                break
            assert time.monotonic() < deadline, "accepted jobs did not finish within 120 s"
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - start
        for job_id in accepted:  # keep the work directory small between rounds
            assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
    return {
        "accepted": len(accepted), "rejected": statuses[429], "seconds": seconds,
        "jobs_per_s": len(accepted) / seconds, "polls_per_s": polls / poll_seconds,
    }


def test_bounded_load_without_errors_or_memory_growth(load_server: tuple[ProcessServer, dict[str, Path]]) -> None:
    server, files = load_server
    proc = psutil.Process(server.proc.pid)
    payload = scene_upload(files)
    mib = 1 << 20
    rss_start = proc.memory_info().rss
    warm = asyncio.run(_round(server.url, payload, JOBS, POLLS))
    rss_warm = proc.memory_info().rss
    load = asyncio.run(_round(server.url, payload, JOBS, POLLS))
    rss_load = proc.memory_info().rss
    print(  # shown with -s; the numbers quoted in the README come from here
        f"\nwarm-up {warm}\nload {load}\nRSS at start {rss_start / mib:.0f} MiB, after the warm-up "
        f"{rss_warm / mib:.0f} MiB, after the load {rss_load / mib:.0f} MiB"
    )
    assert warm["rejected"] > 0 and load["rejected"] > 0  # the queue bound was exercised
    assert rss_load - rss_warm < 32 * mib  # no growth once warm: the load round left nothing behind
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    log = server.output()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
