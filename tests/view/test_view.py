"""The live page: a real ``vstmon`` process with file streams, its HTTP endpoints, and the page in a real
headless Chromium (Debian's ``chromium``; CI installs it and sets VSTMON_REQUIRE_BROWSER=1 so it cannot skip)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.helpers.daemon import daemon_config, tiny_checkpoint, write_mjpg
from tests.helpers.process import Vstmon
from vstmon.view.server import box_in_crop
from vstmon.wire.client import Subscriber

pytestmark = pytest.mark.slow
STREAMS = ("cam_a", "cam_b")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Vstmon, str, int]]:
    root = tmp_path_factory.mktemp("view")
    checkpoint, labels = tiny_checkpoint(root)
    patterns = [("moving", range(48)), ("static", range(48))]
    streams = [
        {
            "name": name,
            "url": str(write_mjpg(root / f"{name}.avi", patterns[i:] + patterns[:i])),
            "loop": True,
            "realtime": True,
        }
        for i, name in enumerate(STREAMS)
    ]
    data = daemon_config(checkpoint, labels, streams, view={"port": 0, "fps": 10})
    process = Vstmon(root, data).wait_running()
    serving = [e for e in process.log_events() if e.get("event") == "live page serving"]
    assert serving, process.log()
    host, port = serving[0]["url"].removeprefix("http://").rstrip("/").split(":")
    yield process, host, int(port)
    assert process.terminate() == 0, process.log()


def get(host: str, port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """One request with ``path`` sent as is (no client-side normalisation of ``..``)."""
    connection = http.client.HTTPConnection(host, port, timeout=20)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read()
    finally:
        connection.close()


def wait_for_labels(host: str, port: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = json.loads(get(host, port, "/api/status")[2])
        if all((status["streams"][s].get("label") or {}).get("smoothed") for s in STREAMS):
            return status
        time.sleep(0.2)
    raise AssertionError(f"no labels on the page's status within {timeout_s} s")


def test_endpoints_serve_the_page_json_and_pictures_and_nothing_else(daemon: tuple[Vstmon, str, int]) -> None:
    _process, host, port = daemon
    status, kind, body = get(host, port, "/")
    assert status == 200 and kind == "text/html; charset=utf-8" and b"<title>vstmon</title>" in body
    assert b"http://" not in body and b"https://" not in body  # no external assets
    state = wait_for_labels(host, port)
    assert set(state["streams"]) == set(STREAMS)
    cam = state["streams"]["cam_a"]
    assert cam["state"] == "streaming" and cam["label"]["label"].startswith("action_")
    assert any(e["kind"] == "label" for e in cam["timeline"]) and any(
        e["kind"] == "reset" for e in cam["timeline"]
    )
    status, kind, body = get(host, port, "/api/frame/cam_a.jpg")
    assert status == 200 and kind == "image/jpeg"
    picture = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape == (64, 64, 3)  # the model's crop (clip.size_px)
    assert get(host, port, "/api/frame/nope.jpg")[0] == 404
    for path in (
        "/api/frame/../../config.yaml",
        "/api/frame/..%2f..%2fconfig.yaml",
        "/../../etc/passwd",
        "//etc/passwd",
        "/view_page.html",
        "/vstmon/view/server.py",
        "/api/frame/cam_a.jpg/../../../config.yaml",
        "/api/status/../../config.yaml",
        "/%2e%2e/%2e%2e/etc/passwd",
    ):
        assert get(host, port, path)[0] == 404, path
    assert get(host, port, "/api/status", method="POST")[0] == 405
    assert get(host, port, "/api/frame/cam_a.jpg", method="HEAD")[0] == 200


def _labels_per_s(pub: str, seconds: float) -> float:
    """Labels of all streams published per second over ``seconds`` (from the seq of their label messages)."""
    with Subscriber(pub, ("label",)) as sub:
        count = 0
        deadline = time.monotonic() + seconds + 10
        started = None
        while time.monotonic() < deadline:
            got = sub.recv(timeout_s=1.0)
            if got is None:
                continue
            if started is None:
                started = time.monotonic()
            count += 1
            if time.monotonic() - started >= seconds:
                break
        return (count - 1) / (time.monotonic() - started) if started is not None and count > 1 else 0.0


def test_five_fast_viewers_leave_the_label_rate_unchanged(daemon: tuple[Vstmon, str, int]) -> None:
    process, host, port = daemon
    wait_for_labels(host, port)
    quiet = _labels_per_s(process.pub, 8)
    stop = threading.Event()
    served = [0] * 5

    def viewer(i: int) -> None:
        while not stop.is_set():
            for path in ("/api/status", "/api/frame/cam_a.jpg", "/api/frame/cam_b.jpg"):
                assert get(host, port, path)[0] == 200
                served[i] += 1

    viewers = [threading.Thread(target=viewer, args=(i,)) for i in range(5)]
    for thread in viewers:
        thread.start()
    try:
        watched = _labels_per_s(process.pub, 8)
    finally:
        stop.set()
        for thread in viewers:
            thread.join(30)
    print(f"labels/s: {quiet:.2f} alone, {watched:.2f} with 5 viewers polling ({sum(served)} requests)")
    assert quiet > 0 and watched >= 0.8 * quiet
    assert sum(served) > 50


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("VSTMON_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is required here (VSTMON_REQUIRE_BROWSER=1) but not installed")
    return found


def _browser(chromium: str, *args: str) -> str:
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--virtual-time-budget=6000", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_page_in_headless_chromium_shows_a_tile_per_stream_with_live_labels(
    daemon: tuple[Vstmon, str, int], tmp_path: Path
) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _process, host, port = daemon
    wait_for_labels(host, port)
    url = f"http://{host}:{port}/"
    first = _browser(chromium, "--dump-dom", url)
    for name in STREAMS:
        assert f'data-stream="{name}"' in first
    assert first.count('class="tile"') == 2
    assert first.count('class="state streaming"') == 2
    assert re.search(r'class="label( stale)?">action_\d', first)  # the smoothed top label is written
    assert re.search(r'class="overlay">action_\d 0\.\d\d<', first)  # and over the picture, with its score
    clips_before = [int(n) for n in re.findall(r"clips (\d+)</div>", first)]
    time.sleep(3)
    second = _browser(chromium, "--dump-dom", url)
    clips_after = [int(n) for n in re.findall(r"clips (\d+)</div>", second)]
    assert len(clips_after) == 2 and all(
        b > a for a, b in zip(clips_before, clips_after, strict=True)
    )  # live
    shot = tmp_path / "live-page.png"
    _browser(chromium, f"--screenshot={shot}", "--window-size=1100,700", url)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (700, 1100)
    assert image.reshape(-1, 3).std(axis=0).max() > 20  # not blank: tiles, pictures, text
    if os.environ.get(
        "VSTMON_SCREENSHOTS"
    ):  # docs: VSTMON_SCREENSHOTS=docs/images pytest tests/view/test_view.py
        shutil.copy(shot, Path(os.environ["VSTMON_SCREENSHOTS"]) / "live-page.png")


def test_a_box_maps_from_the_frame_into_the_models_centre_crop() -> None:
    # 640x480 -> short side 224: 299x224, crop columns 37..260
    assert box_in_crop([0.0, 0.0, 1.0, 1.0], (640, 480), 224) == (0, 0, 223, 223)
    assert box_in_crop([0.5, 0.25, 0.75, 0.75], (640, 480), 224) == (113, 56, 187, 168)
    assert box_in_crop([0.0, 0.1, 0.05, 0.9], (640, 480), 224) is None  # left of the crop
    assert box_in_crop([0.1, 0.1, 0.2, 0.2], (0, 0), 224) is None  # picture size not known yet


def test_per_subject_people_and_their_boxes_reach_the_page(
    tmp_path: Path, carphone_mp4: Path, pedestrian_pb: Path
) -> None:
    checkpoint, labels = tiny_checkpoint(tmp_path)
    stream = {"name": "car", "url": str(carphone_mp4), "loop": True, "realtime": True}
    data = daemon_config(
        checkpoint,
        labels,
        [stream],
        view={"port": 0, "fps": 10},
        subjects={"detector": str(pedestrian_pb), "mode": "per_subject", "detect_fps": 5, "confirm_s": 0.5},
    )
    process = Vstmon(tmp_path, data).wait_running()
    try:
        url = next(e["url"] for e in process.log_events() if e.get("event") == "live page serving")
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        deadline = time.monotonic() + 90
        people: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not people:
            people = json.loads(get(host, int(port), "/api/status")[2])["streams"]["car"]["people"]
            time.sleep(0.3)
        assert people, process.log()
        person = people[0]
        assert person["subject"].startswith("car-") and len(person["box"]) == 4 and person["smoothed"]
        assert len(person["box_px"]) == 4 and all(
            0 <= v < 64 for v in person["box_px"]
        )  # on the 64 px picture
        status, kind, body = get(host, int(port), "/api/frame/car.jpg")
        picture = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and kind == "image/jpeg" and picture is not None
        box_colour = np.abs(picture.astype(int) - (0, 220, 255)).sum(axis=2) < 90  # the drawn box (BGR)
        assert box_colour.sum() > 40, box_colour.sum()
    finally:
        assert process.terminate() == 0, process.log()
