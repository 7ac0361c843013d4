"""``vstmon ctl ENDPOINT reset STREAM [--subject ID]`` and ``vstmon ctl ENDPOINT status``.

Sends one request to the daemon's control socket (docs/PROTOCOL.md), prints the reply as one JSON line and
exits 0 when the reply says ``"ok": true``, 1 otherwise. The reply is checked against the protocol's reply
models (``vstmon.wire.protocol``): one that does not follow it is an error naming the field (exit code 2), as is
no reply within ``--timeout-s`` (never a hang). ``--timeout-s`` may come anywhere: before or after the endpoint or the action.

With ``--server-key FILE --client-key FILE`` the request goes over CURVE (the daemon's ``publish.curve``). A
failed handshake (the daemon refused the key, the wrong server key, CURVE on one side only) is said at once
(exit code 2) rather than waited out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import zmq

from vstmon.errors import VstmonError
from vstmon.wire.client import add_key_arguments, check_connect_endpoint, handshake_monitor, read_handshake
from vstmon.wire.keys import secure_client_socket
from vstmon.wire.protocol import ErrorReply, MessageError, ResetReply, StatusReply, parse_reply

__all__ = ["add_arguments", "request", "run"]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CONTROL_PORT = 5557


def request(
    endpoint: str,
    payload: dict[str, Any],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    server_key: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
) -> ResetReply | StatusReply | ErrorReply:
    """Send one control request (``payload``: ``{"cmd": ...}``, checked by the daemon) and return the reply as
    its model of ``vstmon.wire.protocol``; ``VstmonError`` when no reply comes or it does not follow the protocol.

    ``server_key`` / ``client_key``: CURVE key files as for ``vstmon.wire.client.Subscriber`` (both or neither). A
    failed handshake raises ``VstmonError`` saying what it most likely means, as soon as it happens.
    """
    return _reply(endpoint, payload, _exchange(endpoint, payload, timeout_s, server_key, client_key))


def _reply(endpoint: str, payload: dict[str, Any], data: bytes) -> ResetReply | StatusReply | ErrorReply:
    try:
        return parse_reply(str(payload.get("cmd")), data)
    except MessageError as error:
        raise VstmonError(f"{endpoint} answered out of protocol: {error}") from None


def _exchange(
    endpoint: str,
    payload: dict[str, Any],
    timeout_s: float,
    server_key: str | os.PathLike[str] | None,
    client_key: str | os.PathLike[str] | None,
) -> bytes:
    """Send ``payload``; the reply's bytes."""
    endpoint = check_connect_endpoint(endpoint, DEFAULT_CONTROL_PORT)
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    timeout_ms = max(1, int(timeout_s * 1000))
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDTIMEO, timeout_ms)
    monitor: zmq.Socket | None = None
    no_reply = (
        f"no reply from {endpoint} within {timeout_s:g} s "
        "(is the daemon running, and is publish.control set to this address?)"
    )
    try:
        curve = secure_client_socket(socket, server_key, client_key)
        monitor = handshake_monitor(socket)
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as error:
            raise VstmonError(f"cannot connect to control endpoint {endpoint}: {error}") from None
        deadline = time.monotonic() + timeout_s
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            socket.send(json.dumps(payload, separators=(",", ":")).encode())
            while True:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
                ready = dict(poller.poll(wait_ms))
                if monitor in ready and (problem := read_handshake(monitor, curve)) is not None:
                    raise VstmonError(f"control request to {endpoint} failed: {problem}")
                if socket in ready:
                    reply_bytes = socket.recv(zmq.NOBLOCK)
                    break
                if not ready or time.monotonic() >= deadline:
                    raise VstmonError(no_reply)
        except zmq.Again:
            raise VstmonError(no_reply) from None
        except zmq.ZMQError as error:
            raise VstmonError(f"control request to {endpoint} failed: {error}") from None
    finally:
        if monitor is not None:
            socket.disable_monitor()
            monitor.close(linger=0)
        socket.close(linger=0)
    return reply_bytes


def _add_timeout(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=default,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT_S:g})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "endpoint", metavar="ENDPOINT", help="the daemon's control address, e.g. tcp://127.0.0.1:5557"
    )
    _add_timeout(parser, DEFAULT_TIMEOUT_S)
    add_key_arguments(parser)
    actions = parser.add_subparsers(dest="ctl_command", metavar="ACTION", required=True)
    reset = actions.add_parser(
        "reset", help="start a new segment on a stream (optionally naming the subject)"
    )
    reset.add_argument("stream", metavar="STREAM")
    reset.add_argument(
        "--subject", default=None, metavar="ID", help="id of the new subject (1-128 characters)"
    )
    status = actions.add_parser("status", help="print the daemon's stream states")
    # after the action too; SUPPRESS: an action's parser sets the value only when it is given there
    for action_parser in (reset, status):
        _add_timeout(action_parser, argparse.SUPPRESS)
        add_key_arguments(action_parser, argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.timeout_s <= 0:
        raise VstmonError(f"--timeout-s must be > 0, got {args.timeout_s}")
    payload: dict[str, Any] = {"cmd": args.ctl_command}
    if args.ctl_command == "reset":
        payload["stream"] = args.stream
        if args.subject is not None:
            payload["subject"] = args.subject
    data = _exchange(args.endpoint, payload, args.timeout_s, args.server_key, args.client_key)
    reply = _reply(args.endpoint, payload, data)  # checked; printed as sent (fields of a newer daemon too)
    sys.stdout.write(json.dumps(json.loads(data), separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0 if reply.ok else 1
