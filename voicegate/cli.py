"""The ``voicegate`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from voicegate.config import Options, options_from_env


def _serve(args: argparse.Namespace) -> int:
    import ipaddress

    from aiohttp import log as web_log
    from aiohttp import web

    from voicegate.server.app import create_app

    options = options_from_env()
    server = replace(options.server, host=args.host, port=args.port)
    if args.ice_server:
        server = replace(server, ice_servers=tuple(args.ice_server))
    if args.max_sessions is not None:
        server = replace(server, max_sessions=args.max_sessions)
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not server.token and not args.insecure:
        print(f"voicegate: refusing to serve on {args.host} without a token: set VOICEGATE_TOKEN "
              "(clients send Authorization: Bearer <token>), or pass --insecure", file=sys.stderr)
        return 2
    options = replace(options, server=server)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        print("voicegate: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers == 1:
        print(f"voicegate: serving on http://{args.host}:{args.port}/", flush=True)
        from voicegate.server import runner

        worker_of_supervisor = "VOICEGATE_WORKER_INDEX" in os.environ  # the supervisor logs the offers it routes
        runner.run(create_app(options), args.host, args.port, handoff_socket=options.server.handoff_socket,
                   access_log=None if worker_of_supervisor else web_log.access_logger)
        return 0
    from voicegate.server.supervisor import create_supervisor_app

    print(f"voicegate: serving on http://{args.host}:{args.port}/ with {workers} workers", flush=True)
    web.run_app(create_supervisor_app(options, workers), host=args.host, port=args.port, print=None)
    return 0


def _classify(args: argparse.Namespace) -> int:
    import json

    from voicegate.gate.relevance import DEFAULT_MODEL, FastTextJudge

    judge = FastTextJudge(args.model or DEFAULT_MODEL)
    for raw in sys.stdin:
        text = raw.rstrip("\r\n")
        result = judge.classify(text)
        sys.stdout.write(json.dumps({"text": text, "label": result.label,
                                     "confidence": round(result.confidence, 4)}) + "\n")
        sys.stdout.flush()
    return 0


def _train_relevance(args: argparse.Namespace) -> int:
    import json

    from voicegate.gate.relevance import DEFAULT_MODEL
    from voicegate.gate.train_relevance import DEFAULT_DATA, train

    data_dir = args.data or DEFAULT_DATA
    if not data_dir.is_dir():
        print(f"voicegate: training data {data_dir} not found (pass --data DIR with clinc150/, hwu64/, mrda/)",
              file=sys.stderr)
        return 2
    out = args.out or DEFAULT_MODEL
    figures = train(out=out, data_dir=data_dir, with_mrda=args.with_mrda,
                    card=out.with_suffix(".md") if not args.no_card else None)
    summary = {k: figures[k] for k in ("train_secs", "size_bytes", "held_out", "external_mrda_test")}
    print(json.dumps(summary, indent=1, default=str))
    print(f"voicegate: wrote {out}", file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from voicegate.bench.run import run_bench

    logging.getLogger("voicegate").setLevel(logging.WARNING)

    from voicegate.bench.corpus import ManifestError

    policies = tuple(p for item in args.policies for p in item.split(",") if p)
    try:
        gate = replace(options_from_env().gate, echo_cancel=True) if args.echo_cancel else options_from_env().gate
        run_bench(args.quick, args.out, args.corpus, policies, live=args.live, url=args.url,
                  live_calls=args.live_calls, transport=args.transport,
                  token=os.environ.get("VOICEGATE_TOKEN") or None, options=gate, modelled_clock=args.modelled_clock)
    except (ManifestError, ValueError) as exc:
        print(f"voicegate bench: {exc}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text())
    return 0


def _asr_bench(args: argparse.Namespace) -> int:
    from voicegate.asr.base import UtteranceAsr
    from voicegate.bench.asr_eval import run_asr_bench
    from voicegate.gate.driver import make_asr

    logging.getLogger("voicegate").setLevel(logging.WARNING)
    options = options_from_env()
    if args.turns:
        return _turn_bench(args, options)
    engines: dict[str, UtteranceAsr] = {}
    for name in args.engines:
        try:
            engines[name] = make_asr(name, options)
        except (ValueError, OSError) as exc:
            print(f"voicegate asr-bench: {name}: {exc}", file=sys.stderr)
            return 2
    run_asr_bench(engines, args.out, fsdd_every=args.fsdd_every, vocal_per_class=args.vocal_per_class,
                  long_form=not args.no_long_form)
    print((args.out / "asr.md").read_text())
    return 0


def _turn_bench(args: argparse.Namespace, options: Options) -> int:
    import asyncio
    import shlex

    from voicegate.asr.turns import local_turn_engine
    from voicegate.asr.whisper import WhisperAsr
    from voicegate.bench import turns
    from voicegate.bench.asr_eval import lscpu_model
    from voicegate.bench.corpus import SHARED

    clips = turns.barista_clips(SHARED, args.limit)
    if not clips:
        print(f"voicegate asr-bench --turns: no labelled orders under {SHARED / turns.BARISTA}", file=sys.stderr)
        return 2
    report: dict[str, object] = {"clips": len(clips), "cpu": lscpu_model(), "profile": turns.environment_note(),
                                 "command": "voicegate " + shlex.join(sys.argv[1:]), "offline": []}
    offline: list[dict[str, object]] = []
    for name in args.turn_engines:
        before = turns.rss_mb()
        try:
            engine = WhisperAsr(options.asr, name="whisper-tiny.en (reflex decode)") if name == "reflex" \
                else local_turn_engine(options.turn, name)
        except (ValueError, OSError) as exc:
            print(f"voicegate asr-bench --turns: {name}: {exc}", file=sys.stderr)
            return 2
        offline.append(turns.offline_engine(engine, clips, before))
        print(f"{name}: {offline[-1]['slots_heard']:.1%} slot values heard", file=sys.stderr)
    report["offline"] = offline
    if args.live_calls:
        live_clips = clips[:args.live_limit] if args.live_limit else clips
        report["live"] = asyncio.run(turns.run_live(live_clips, args.live_calls, args.live_engine))
    turns.write(report, args.out)
    print((args.out / "turns.md").read_text())
    return 0


def _load(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from voicegate.load import run_load, run_soak, summarize_rounds

    logging.getLogger("voicegate").setLevel(logging.WARNING)
    if args.soak:
        print(json.dumps(asyncio.run(run_soak(args.soak)), indent=1))
        return 0
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    for calls in args.calls:
        rounds = []
        for index in range(args.rounds):
            result = asyncio.run(run_load(calls, args.secs, args.url, quiet=args.quiet, workers=args.workers,
                                          server_pid=args.server_pid, transport=args.transport))
            rounds.append(result)
            print(json.dumps({**result, "round": index + 1} if args.rounds > 1 else result), flush=True)
        if args.rounds > 1:
            print(json.dumps(summarize_rounds(rounds)), flush=True)
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
    serve.add_argument("--max-sessions", type=int, default=None,
                       help="concurrent calls per worker (VOICEGATE_MAX_SESSIONS)")
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes behind the one port (default: the number of cores; 1 = no supervisor)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback host without VOICEGATE_TOKEN")
    serve.set_defaults(func=_serve)

    classify = sub.add_parser("classify", help="label transcripts from stdin: one JSON object per input line")
    classify.add_argument("--model", type=Path, default=None, help="a .ftz/.bin model (default models/relevance.ftz)")
    classify.set_defaults(func=_classify)

    train = sub.add_parser("train-relevance", help="rebuild models/relevance.ftz reproducibly")
    train.add_argument("--data", type=Path, default=None, help="text data folder (default ../shared/data/text)")
    train.add_argument("--out", type=Path, default=None)
    train.add_argument("--with-mrda", action="store_true",
                       help="also train on ICSI MRDA (verify its licence first; the shipped model does not)")
    train.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    train.set_defaults(func=_train_relevance)

    bench = sub.add_parser("bench", help="barge-in benchmark on the built-in scenario corpus")
    bench.add_argument("--quick", action="store_true", help="a stratified subset of the built-in corpus")
    bench.add_argument("--corpus", type=Path, default=None, help="a JSON Lines scenario manifest")
    bench.add_argument("--out", type=Path, default=Path("bench-out"))
    bench.add_argument("--policies", nargs="+", default=["voicegate,pipecat,livekit"],
                       help="policies to run (space or comma separated): voicegate, pipecat (pipecat-1.14, "
                            "pipecat-1.14-minwords2, pipecat-1.14+voicegate), livekit (livekit-1.8, "
                            "livekit-1.8+voicegate), peers, integrations, emulations (vad_only, "
                            "min_duration, min_words); peers need pip install -e '.[peers]' and are skipped, "
                            "with a message, when missing")
    bench.add_argument("--live", action="store_true",
                       help="also play every scenario through a real WebRTC call and report live figures beside "
                            "the simulated ones")
    bench.add_argument("--url", default=None, help="with --live: a running voicegate server (default: start one)")
    bench.add_argument("--live-calls", type=int, default=1, help="with --live: calls placed at once")
    bench.add_argument("--transport", choices=("webrtc", "ws"), default="webrtc",
                       help="with --live: place the calls over WebRTC (default) or GET /ws (48 kHz PCM16)")
    bench.add_argument("--echo-cancel", action="store_true",
                       help="run the simulated pipeline with echo cancellation on (VOICEGATE_GATE_ECHO_CANCEL=1)")
    bench.add_argument("--modelled-clock", action="store_true",
                       help="stamp simulated decisions with modelled compute costs instead of measured ones: the run "
                            "is deterministic, so two CPU profiles that decide differently differ in their numerics "
                            "(make test-portable)")
    bench.set_defaults(func=_bench)

    asr = sub.add_parser("asr-bench", help="transcript engines side by side: compute time, words heard, sounds")
    asr.add_argument("--engines", nargs="+", default=["whisper", "whisper-padded"],
                     help="engines to compare; the last one is the reference (whisper, whisper-padded, vosk)")
    asr.add_argument("--out", type=Path, default=Path("bench-out/asr"))
    asr.add_argument("--fsdd-every", type=int, default=5, help="use every Nth Free Spoken Digit clip")
    asr.add_argument("--vocal-per-class", type=int, default=12, help="non-speech vocal clips per class")
    asr.add_argument("--no-long-form", action="store_true", help="skip the long-form agreement check")
    asr.add_argument("--turns", action="store_true",
                     help="turn transcripts instead: slot values heard in the shared spoken orders, offline per "
                          "engine and through live calls (writes turns.md / turns.json)")
    asr.add_argument("--turn-engines", nargs="+", default=["reflex", "whisper-base"],
                     help="--turns: engines offline (reflex = the reflex's tiny.en decode, whisper-base, "
                          "whisper-tiny, or a CTranslate2 Whisper directory)")
    asr.add_argument("--limit", type=int, default=None, help="--turns: only the first N orders")
    asr.add_argument("--live-calls", type=int, nargs="*", default=[1, 4],
                     help="--turns: concurrent calls per live pass (none: offline only)")
    asr.add_argument("--live-limit", type=int, default=None, help="--turns: live passes on the first N orders only")
    asr.add_argument("--live-engine", default="whisper-base", help="--turns: the server's VOICEGATE_TURN_ENGINE")
    asr.set_defaults(func=_asr_bench)

    load = sub.add_parser("load", help="concurrent real calls on loopback (or a connect/hang-up soak)")
    load.add_argument("--calls", type=int, nargs="+", default=[4], help="concurrent calls (several: a sweep)")
    load.add_argument("--secs", type=float, default=20.0, help="talk time per run")
    load.add_argument("--rounds", type=int, default=1,
                      help="repeat each run N times (a fresh server each, unless --url): a JSON line per round, "
                           "then one with each figure's median, min and max (\"summary\": true)")
    load.add_argument("--url", default=None, help="an already running server (default: start one)")
    load.add_argument("--soak", type=int, default=0, metavar="CYCLES", help="sequential connect/talk/hang-up")
    load.add_argument("--quiet", action="store_true",
                      help="callers stay silent while the bot talks: the cost of listening (default: barge-in)")
    load.add_argument("--server-pid", type=int, default=None,
                      help="with --url: the server's process id, to measure its CPU (and its workers')")
    load.add_argument("--workers", type=int, default=None,
                      help="start the server with --workers N (default: the server's own default)")
    load.add_argument("--transport", choices=("webrtc", "ws", "twilio"), default="webrtc",
                      help="how the callers connect: real WebRTC calls (default), GET /ws (16 kHz PCM16) or "
                           "GET /twilio (Media Streams); the socket callers cost a fraction of a WebRTC caller")
    load.set_defaults(func=_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``voicegate`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    return int(args.func(args))
