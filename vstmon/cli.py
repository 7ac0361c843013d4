"""Command line: ``vstmon [run] --config config.yaml`` and the tools beside it.

Each sub-command lives in its own module, which provides ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them (imports are lazy so ``vstmon --help`` stays fast).

Exit codes: 0 success; 2 command-line misuse (argparse) and failures that are not the configuration's;
78 (EX_CONFIG) a configuration problem: file, YAML, schema, checkpoint or labels, device, endpoint
(``VstmonError.exit_code``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vstmon import __version__
from vstmon.errors import VstmonError

_DESCRIPTION = (
    "vstmon: real-time action recognition (Video Swin Transformer) on many video streams, "
    "labels published over ZeroMQ. `vstmon --config config.yaml` runs the daemon."
)

# name -> (module, help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("vstmon.service.run", "run the monitor daemon (the default command)"),
    "check": ("vstmon.service.check", "validate a config file (and that its checkpoint loads), then exit"),
    "classify": ("vstmon.offline.classify", "classify a whole video file offline into a JSON-lines timeline"),
    "train": ("vstmon.train.command", "fine-tune on your own labelled videos (one folder per class)"),
    "eval": ("vstmon.train.evaluate", "score a checkpoint on labelled videos (official multi-view test)"),
    "serve": (
        "vstmon.service.serve",
        "run a Triton inference server with the model, for daemons on inference.backend: triton",
    ),
    "weights": ("vstmon.model.fetch", "list or download official Video Swin checkpoints"),
    "listen": ("vstmon.wire.client", "subscribe to a daemon and print its messages as JSON lines"),
    "ctl": ("vstmon.service.control_cli", "send a control command (reset, status) to a running daemon"),
    "keys": ("vstmon.wire.keys", "generate CURVE key pairs for the PUB and control sockets (publish.curve)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(prog="vstmon", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"vstmon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `vstmon --config x.yaml` means `vstmon run --config x.yaml`
    if argv and argv[0] not in _COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    command = argv[0] if argv and argv[0] in _COMMANDS else ""
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except VstmonError as error:
        from vstmon.log import redact_url

        # one line per problem (a config with several bad keys gives several), each prefixed
        for line in str(error).splitlines() or [type(error).__name__]:
            print(f"vstmon: error: {redact_url(line)}", file=sys.stderr)  # a message may quote a URL
        return error.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
