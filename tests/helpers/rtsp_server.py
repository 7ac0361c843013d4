"""A small RTSP server for tests and benchmarks (Debian's GStreamer RTSP server, system Python).

Run with the system interpreter, which has PyGObject (``gi``):

    /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --mode testsrc
    /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --mode file --path clip.mp4   # H.264 mp4, no re-encode
    /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --mode clock                  # frames encode wall clock
    /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --mode frozen                 # a camera stuck on one picture

Serves ``rtsp://127.0.0.1:PORT/stream`` (one shared pipeline for all clients) and prints ``READY <port>``
on stdout once listening (``--port 0``: a port the OS picks, printed there). ``--auth user:password`` requires HTTP basic credentials.

Clock mode: each frame is a ``--size`` x ``--size`` grey image whose central 8 x 8 grid of cells encodes
``time.time()`` in milliseconds at the moment the frame was pushed (64 bits, most significant first, a
white cell is 1). ``decode_clock_ms`` in benchmarks/bench_ingest.py reads it back.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

CLOCK_GRID = 8  # cells per side; 64 bits


def _encoder(fps: int) -> str:
    return (
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
        "rtph264pay name=pay0 pt=96 config-interval=1"
    )


def _launch(args: argparse.Namespace) -> str:
    if args.mode == "frozen":  # a still picture at a constant quantiser: every decoded frame is the same
        return (
            f"( videotestsrc is-live=true pattern=colors ! video/x-raw,width={args.width},height={args.height},"
            f"framerate={args.fps}/1 ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast "
            f"pass=quant quantizer=20 key-int-max={args.fps} ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    if args.mode == "testsrc":
        return (
            f"( videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! video/x-raw,width={args.width},"
            f"height={args.height},framerate={args.fps}/1 ! videoconvert ! {_encoder(args.fps)} )"
        )
    if args.mode == "file":
        return f'( filesrc location="{args.path}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'
    return (
        f"( appsrc name=clocksrc is-live=true format=time do-timestamp=true "
        f"caps=video/x-raw,format=GRAY8,width={args.size},height={args.size},framerate={args.fps}/1 "
        f"! videoconvert ! video/x-raw,format=I420 ! {_encoder(args.fps)} )"
    )


def clock_frame(now_ms: int, size_px: int) -> bytes:
    """A GRAY8 frame whose central grid encodes ``now_ms`` (64 bits, MSB first)."""
    cell = size_px // (CLOCK_GRID + 2)  # one cell of margin on each side
    margin = (size_px - cell * CLOCK_GRID) // 2
    blank = bytes(size_px)
    rows = [blank] * margin
    for r in range(CLOCK_GRID):
        line = bytearray(size_px)
        for c in range(CLOCK_GRID):
            bit = (now_ms >> (63 - (r * CLOCK_GRID + c))) & 1
            if bit:
                start = margin + c * cell
                line[start : start + cell] = b"\xff" * cell
        rows.extend([bytes(line)] * cell)
    rows.extend([blank] * (size_px - len(rows)))
    return b"".join(rows)


class _ClockFeeder:
    """Pushes one clock frame every 1/fps seconds into the shared pipeline's appsrc."""

    def __init__(self, size_px: int, fps: int) -> None:
        self.size_px = size_px
        self.fps = fps
        self.appsrc: Gst.Element | None = None
        self.timer: int | None = None

    def on_media_configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        self.appsrc = media.get_element().get_by_name_recurse_up("clocksrc")
        if self.timer is None:
            self.timer = GLib.timeout_add(max(1, round(1000 / self.fps)), self._push)

    def _push(self) -> bool:
        if self.appsrc is not None:
            data = clock_frame(int(time.time() * 1000), self.size_px)
            self.appsrc.emit("push-buffer", Gst.Buffer.new_wrapped(data))
        return True


def _set_auth(server: GstRtspServer.RTSPServer, factory: GstRtspServer.RTSPMediaFactory, cred: str) -> None:
    user, _, password = cred.partition(":")
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", user)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role(user, "media.factory.access", True)
    permissions.add_permission_for_role(user, "media.factory.construct", True)
    factory.set_permissions(permissions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["testsrc", "file", "clock", "frozen"], default="testsrc")
    parser.add_argument("--path", help="H.264 .mp4 for --mode file")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--size", type=int, default=480, help="clock mode frame side, pixels")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--auth", help="user:password required from clients (basic auth)")
    args = parser.parse_args(argv)
    if args.mode == "file" and not args.path:
        parser.error("--mode file needs --path")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch(args))
    factory.set_shared(True)
    if args.mode == "clock":
        feeder = _ClockFeeder(args.size, args.fps)
        factory.connect("media-configure", feeder.on_media_configure)
    if args.auth:
        _set_auth(server, factory, args.auth)
    server.get_mount_points().add_factory("/stream", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)  # --port 0: the port the OS chose
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
