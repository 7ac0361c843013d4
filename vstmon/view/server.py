"""The operator's live page: a read-only HTTP server beside the pipeline (``view.port``).

Paths (nothing else is served: no file system behind it, so no path can reach a file):

- ``GET /``: one small HTML page with vanilla JS, no external assets (``page.html`` beside this module, packaged);
- ``GET /api/status``: JSON: the daemon ``status`` object (as published), and per stream its latest label, its
  people (per-subject mode) and the timeline of the last ``view.timeline_s`` seconds (labels and resets);
- ``GET /api/frame/<stream>.jpg``: the stream's newest picture as the model sees it (the fitted square crop from
  its ring buffer), with the top label, and the people's boxes and ids, drawn on it.

Cost only when looked at: a picture is the stream's newest (a copy from its ring, validated after it; the
worker, which owns the ring, is never held up; from a worker process, asked for over its pipe) and encoded in the request's thread, at most ``view.fps`` times a
second per stream (later requests get the cached JPEG); with nobody looking nothing is read or encoded. Labels
reach the page through a publisher tap (``ViewState.on_message``, typed messages of ``vstmon.wire.protocol``):
bounded deques per stream, appended under a lock, the cost of a few attribute reads per published message. At most ``view.max_clients`` requests are served at
once (the rest get 503 at once), so a crowd of browsers cannot grow threads without bound; a slow browser only
holds its own request thread.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import cv2
import numpy as np

from vstmon.config import ViewConfig
from vstmon.errors import ConfigKeyError
from vstmon.ingest.fit import fitted_size
from vstmon.log import get_logger
from vstmon.wire.protocol import DaemonStatusBody, LabelMessage, Message, ResetMessage, SegmentMessage

__all__ = ["PictureSource", "SizeSource", "ViewServer", "ViewState", "box_in_crop", "start_view"]

_log = get_logger("view")
_FRAME_PATH = re.compile(r"^/api/frame/([A-Za-z0-9_.-]{1,64})\.jpg$")
_MAX_EVENTS_PER_S = (
    10  # timeline entries kept per second of timeline_s (labels come at most a few per second)
)
BOX_BGR = (0, 220, 255)  # people's boxes on the pictures (amber)

# a stream's newest picture (RGB, as the model sees it: a copy) and its source's picture size (width, height), or
# None when it has none yet; and, cheaply, the picture's size in pixels and the source's size
PictureSource = Callable[[str], tuple[np.ndarray, tuple[int, int]] | None]
SizeSource = Callable[[str], tuple[int, tuple[int, int]] | None]


def box_in_crop(
    box: tuple[float, ...] | list[float], frame_wh: tuple[int, int], size_px: int
) -> tuple[int, int, int, int] | None:
    """A box in 0..1 of the source frame -> pixels of the fitted centre crop (short side resized to
    ``size_px``, centre square), clipped to it; None when it lies outside the crop or the frame size is unknown."""
    width, height = frame_wh
    if width <= 0 or height <= 0:
        return None
    fitted_w, fitted_h = fitted_size(width, height, size_px)
    left, top = (fitted_w - size_px) // 2, (fitted_h - size_px) // 2
    x0, y0, x1, y1 = (
        round(box[0] * fitted_w) - left,
        round(box[1] * fitted_h) - top,
        round(box[2] * fitted_w) - left,
        round(box[3] * fitted_h) - top,
    )
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size_px - 1, x1), min(size_px - 1, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


class ViewState:
    """What the page shows of the published messages: per stream the newest label, the people and a timeline.

    ``on_message`` is a ``Publisher`` tap (called under the publish lock: quick, and it copies what it keeps).
    """

    def __init__(self, timeline_s: float) -> None:
        self.timeline_s = timeline_s
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, Any]] = {}
        self._people: dict[str, dict[str, dict[str, Any]]] = {}
        self._timeline: dict[str, deque[dict[str, Any]]] = {}

    def _events(self, stream: str) -> deque[dict[str, Any]]:
        events = self._timeline.get(stream)
        if events is None:
            events = self._timeline[stream] = deque(maxlen=int(self.timeline_s * _MAX_EVENTS_PER_S))
        return events

    def on_message(self, topic: str, message: Message) -> None:
        if not isinstance(message, LabelMessage | ResetMessage | SegmentMessage):
            return
        stream, ts = message.stream, message.ts
        with self._lock:
            if isinstance(message, LabelMessage):
                top = message.top[0] if message.top else None
                smoothed = message.smoothed[0] if message.smoothed else top
                entry = {
                    "ts": ts,
                    "label": top.label if top else None,
                    "score": top.score if top else None,
                    "smoothed": smoothed.label if smoothed else None,
                    "smoothed_score": smoothed.score if smoothed else None,
                    "segment": message.segment,
                    "subject": message.subject,
                    "box": list(message.box) if message.box is not None else None,
                    "untrained": message.untrained,
                }
                if message.box is not None and message.subject:
                    self._people.setdefault(stream, {})[message.subject] = entry
                else:
                    self._latest[stream] = entry
                self._events(stream).append(
                    {"ts": ts, "kind": "label", "label": entry["smoothed"], "subject": entry["subject"]}
                )
            elif isinstance(message, ResetMessage):
                self._events(stream).append(
                    {"ts": ts, "kind": "reset", "reason": message.reason, "segment": message.segment}
                )
            elif message.subject and message.box is not None:  # that person's clips ended
                self._people.get(stream, {}).pop(message.subject, None)

    def snapshot(self, stream: str) -> dict[str, Any]:
        """The page's view of ``stream``: latest label, people, timeline (oldest first), trimmed to timeline_s."""
        horizon = time.time() - self.timeline_s
        with self._lock:
            events = self._timeline.get(stream, deque())
            while events and events[0]["ts"] < horizon:
                events.popleft()
            return {
                "label": dict(self._latest[stream]) if stream in self._latest else None,
                "people": [dict(p) for p in self._people.get(stream, {}).values()],
                "timeline": list(events),
            }

    def drawables(self, stream: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        with self._lock:
            latest = self._latest.get(stream)
            return (dict(latest) if latest else None), [
                dict(p) for p in self._people.get(stream, {}).values()
            ]


class _Pictures:
    """Per stream: the newest picture as JPEG, re-encoded at most ``fps`` times a second, into one buffer."""

    def __init__(self, pictures: PictureSource, state: ViewState, cfg: ViewConfig) -> None:
        self._pictures = pictures
        self._state = state
        self._period_s = 1.0 / cfg.fps
        self._quality = cfg.jpeg_quality
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, bytes]] = {}
        self.encoded = 0  # pictures encoded (the page's real cost)

    def jpeg(self, stream: str) -> bytes | None:
        with self._lock:  # one encoder at a time: viewers share the picture instead of each paying for it
            now = time.monotonic()
            cached = self._cache.get(stream)
            if cached is not None and now - cached[0] < self._period_s:
                return cached[1]
            found = self._pictures(stream)
            if found is None:
                return cached[1] if cached else None
            rgb, frame_wh = found
            picture = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            self._draw(stream, picture, frame_wh)
            ok, data = cv2.imencode(".jpg", picture, (cv2.IMWRITE_JPEG_QUALITY, self._quality))
            if not ok:
                return None
            self._cache[stream] = (now, data.tobytes())
            self.encoded += 1
            return self._cache[stream][1]

    def _draw(self, stream: str, picture: np.ndarray, frame_wh: tuple[int, int]) -> None:
        """The people's boxes. Text is left to the page (HTML over the picture): OpenCV 5's text functions cost
        ~26 ms on their first use in each thread (measured here), and every request has a thread of its own."""
        _latest, people = self._state.drawables(stream)
        size = picture.shape[0]
        for person in people:
            box = box_in_crop(person["box"], frame_wh, size)
            if box is not None:
                cv2.rectangle(picture, box[:2], box[2:], BOX_BGR, 2)


class ViewServer:
    """Owns the HTTP server thread: ``start()`` binds and serves, ``stop()`` shuts it down and joins it."""

    def __init__(
        self,
        cfg: ViewConfig,
        state: ViewState,
        status: Callable[[], DaemonStatusBody],
        pictures: PictureSource,
        sizes: SizeSource,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self._status = status
        self.pictures = _Pictures(pictures, state, cfg)
        self._sizes = sizes
        self._page = resources.files("vstmon.view").joinpath("page.html").read_bytes()
        self._slots = threading.BoundedSemaphore(cfg.max_clients)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else 0

    def start(self) -> None:
        """Bind (OSError when the port is taken, raised to the caller) and serve in a thread."""
        server = ThreadingHTTPServer((self.cfg.host, self.cfg.port or 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.25}, name="vstmon-view", daemon=True
        )
        self._thread.start()
        _log.info("live page serving", url=f"http://{self.cfg.host}:{self.port}/")

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = None

    # -- what the handler serves ---------------------------------------------------------------------------
    def _stream_json(self, name: str, info: dict[str, Any]) -> dict[str, Any]:
        """The status of one stream, the page's view of it, and where its people are on its picture."""
        view = self.state.snapshot(name)
        found = self._sizes(name)
        if found is not None:
            size_px, frame_wh = found
            view["picture_px"] = size_px
            for person in view["people"]:
                person["box_px"] = (
                    box_in_crop(person["box"], frame_wh, size_px) if person.get("box") else None
                )
        return {**info, **view}

    def status_json(self) -> bytes:
        daemon = self._status().model_dump(mode="json")
        streams = {name: self._stream_json(name, info) for name, info in daemon["streams"].items()}
        return json.dumps(
            {
                **daemon,
                "streams": streams,
                "now": time.time(),
                "view_fps": self.cfg.fps,
                "view_timeline_s": self.cfg.timeline_s,
            },
            separators=(",", ":"),
            allow_nan=False,
            default=str,
        ).encode()


def _handler(view: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vstmon-view"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log: the page polls several times a second

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; img-src 'self'",
            )
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self) -> None:
            self._send(HTTPStatus.NOT_FOUND, b'{"error":"not found"}', "application/json")

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            if not view._slots.acquire(blocking=False):
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b'{"error":"busy"}', "application/json")
                return
            try:
                view.requests += 1
                self._route(self.path.split("?", 1)[0])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away
            except Exception as error:
                _log.error("live page request failed", path=self.path[:80], error=str(error))
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b'{"error":"internal"}', "application/json")
            finally:
                view._slots.release()

        def _route(self, path: str) -> None:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, view._page, "text/html; charset=utf-8")
            elif path == "/api/status":
                self._send(HTTPStatus.OK, view.status_json(), "application/json")
            elif (match := _FRAME_PATH.match(path)) is not None:
                picture = view.pictures.jpeg(match.group(1))
                if picture is None:
                    self._not_found()
                else:
                    self._send(HTTPStatus.OK, picture, "image/jpeg")
            else:
                self._not_found()

        def _refuse(self) -> None:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b'{"error":"read-only"}', "application/json")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    return Handler


def start_view(
    cfg: ViewConfig,
    publisher: Any,
    status: Callable[[], DaemonStatusBody],
    pictures: PictureSource,
    sizes: SizeSource,
) -> ViewServer:
    """Tap ``publisher`` for the page's labels and serve the page; a port that cannot be bound is a ConfigError."""
    state = ViewState(cfg.timeline_s)
    publisher.add_tap(state.on_message)
    server = ViewServer(cfg, state, status, pictures, sizes)
    try:
        server.start()
    except OSError as error:
        raise ConfigKeyError(
            "view.port", f"cannot listen on {cfg.host}:{cfg.port}: {error.strerror or error}"
        ) from None
    return server
