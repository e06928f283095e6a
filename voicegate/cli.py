"""The ``voicegate`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from voicegate.config import options_from_env


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from voicegate.server.app import create_app

    options = options_from_env()
    server = replace(options.server, host=args.host, port=args.port)
    if args.ice_server:
        server = replace(server, ice_servers=tuple(args.ice_server))
    options = replace(options, server=server)
    print(f"voicegate: serving on http://{args.host}:{args.port}/", flush=True)
    web.run_app(create_app(options), host=args.host, port=args.port, print=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands: serve, classify, train-relevance, bench)."""
    parser = argparse.ArgumentParser(prog="voicegate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the WebRTC endpoint and the demo page")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--ice-server", action="append", default=[],
                       help="STUN/TURN URL for RTCConfiguration (repeatable); none by default")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``voicegate`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    return int(args.func(args))
