"""SIGTERM drains a real `storydiff serve` (what Kubernetes sends after the preStop sleep): /ready turns
503 at once, new work gets 503 with Retry-After, a story that can finish within `shutdown_grace`
finishes, the one that cannot gets its draft in an `error` event, and the process exits 0 in time."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from app.diffusion.text import MASK_PLACEHOLDER
from tests.conftest import free_port
from tests.support.server_process import LONG_LENGTH, save_long_checkpoint, start_server, wait_ready

# Every forward 100 ms slower, so that the stories' lengths, not the machine's load, decide: the short
# one takes about 24 x 0.1 = 2.4 s (measured 2.4 s beside the long one on 2 busy cores), well inside
# the grace; the long one about 256 x 0.1 = 26 s (a step that reveals nothing skips the model: ~20 s).
FORWARD_DELAY_S = 0.1
GRACE_S = 6.0
TEARDOWN_S = 10.0  # what deploy/kubernetes's terminationGracePeriodSeconds leaves after the drain
SHORT = {"stream": True, "length": 24, "steps": 24, "seed": 2}
LONG = {"stream": True, "length": LONG_LENGTH // 2, "steps": LONG_LENGTH // 2, "seed": 1}


@pytest.fixture(scope="module")
def long_checkpoint_dir(tmp_path_factory, cased_tokenizer) -> Path:
    return save_long_checkpoint(tmp_path_factory.mktemp("long-checkpoint"), cased_tokenizer)


class Story(threading.Thread):
    """One SSE story, read to its end in a thread: its event names and the last event's data."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.names: list[str] = []
        self.last: dict = {}
        self.streaming = threading.Event()  # the first step arrived
        self.ended = threading.Event()
        self.cut: httpx.TransportError | None = None  # the connection broke before the stream ended

    def run(self) -> None:
        try:
            with httpx.Client(timeout=60) as client, connect_sse(client, "POST", self.url, json=self.body) as source:
                for event in source.iter_sse():
                    if event.data:  # not a keep-alive comment
                        self.names.append(event.event)
                        self.last = json.loads(event.data)
                        self.streaming.set()
        except httpx.TransportError as err:
            self.cut = err
        finally:
            self.ended.set()
            self.streaming.set()


def draining(url: str, story: Story) -> httpx.Response:
    """GET /ready until it stops answering 200 (the signal reaches the loop); the long story still runs."""
    while (ready := httpx.get(f"{url}/ready")).status_code == 200:
        assert not story.ended.is_set(), "the drain never began"
        time.sleep(0.02)
    return ready


@pytest.mark.slow
def test_sigterm_drains_running_stories_refuses_new_ones_and_exits_0(long_checkpoint_dir) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ("--shutdown-grace", str(GRACE_S), "--ping-interval", "1")
    process = start_server(long_checkpoint_dir, port, *flags, forward_delay_s=FORWARD_DELAY_S)
    try:
        wait_ready(process, url)
        long, short = Story(f"{url}/generate", LONG), Story(f"{url}/generate", SHORT)
        for story in (long, short):
            story.start()
            story.streaming.wait(60)
        assert not short.ended.is_set(), "the short story ended before the signal: nothing would be drained"
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        ready = draining(url, long)
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        refused = httpx.post(f"{url}/generate", json={"length": 24, "steps": 4})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert "shutting down" in refused.json()["detail"]

        short.join(GRACE_S + TEARDOWN_S)
        long.join(GRACE_S + TEARDOWN_S)
        assert short.names[0] == "step" and short.names[-1] == "done"
        assert long.names[-1] == "error" and long.last["error"] == "shutdown"
        draft = long.last["draft"]
        assert draft and draft.replace(MASK_PLACEHOLDER, "").strip(), "the unfinished story gets its draft"
        assert process.wait(timeout=GRACE_S + TEARDOWN_S) == 0
        print(f"exited {time.monotonic() - signalled:.1f} s after SIGTERM (grace {GRACE_S:g} s)")
    finally:
        if process.poll() is None:
            process.kill()
    log = process.communicate()[0]
    assert "draining: 2 requests" in log and "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_a_second_sigterm_stops_at_once(long_checkpoint_dir) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ("--shutdown-grace", "600", "--ping-interval", "1")
    process = start_server(long_checkpoint_dir, port, *flags, forward_delay_s=FORWARD_DELAY_S)
    try:
        wait_ready(process, url)
        long = Story(f"{url}/generate", LONG)
        long.start()
        long.streaming.wait(60)
        process.send_signal(signal.SIGTERM)
        draining(url, long)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "not the 600 s drain: the second signal ends it"
        long.join(60)
        assert long.names[-1] == "step" and long.cut is not None, "cut off mid-story"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
