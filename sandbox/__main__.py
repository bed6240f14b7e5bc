"""Run the iTwin Platform simulator until Ctrl-C: ``python -m sandbox [--port 5443] [--rate-limit export=10] ...``.

It prints the settings that point the app (or any client) at it, including the CA bundle to trust.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

from sandbox.itwin_platform import DEFAULT_RATE_LIMITS, Faults, RecordedRequest, Simulator


def _rate_limit(text: str) -> tuple[str, float]:
    api, sep, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if not sep or not api or value < 0:
        raise argparse.ArgumentTypeError(f"expected API=CALLS_PER_SECOND (0: unlimited), got {text!r}")
    return api, value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sandbox``."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="Run the iTwin Platform simulator (HTTPS on loopback) until Ctrl-C."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5443, help="port to listen on; 0 picks a free one")
    parser.add_argument("--client-id", default="sim-client-id")
    parser.add_argument("--client-secret", default="sim-client-secret")
    parser.add_argument("--token-lifetime", type=float, default=3600.0, help="seconds a token is valid")
    parser.add_argument(
        "--rate-limit",
        type=_rate_limit,
        action="append",
        default=[],
        metavar="API=N",
        help="calls per second for an API, e.g. export=10 (repeatable; default clashdetection=6)",
    )
    parser.add_argument("--ca-out", type=Path, default=Path(".sandbox/ca.pem"), help="where to write the CA PEM")
    faults = parser.add_argument_group("faults (API calls only)")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share answered 500/503/429")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share whose connection is dropped")
    faults.add_argument("--stall-rate", type=float, default=0.0, help="share that stall --stall-seconds")
    faults.add_argument("--stall-seconds", type=float, default=5.0)
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to every API call")
    faults.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log", action="store_true", help="print one line per request on stderr")
    return parser


def _log(request: RecordedRequest) -> None:
    status = "dropped" if request.status is None else request.status
    fault = f" ({request.fault})" if request.fault else ""
    print(f"{request.method} {request.path} -> {status}{fault}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Start the simulator, print the settings to use, and serve until interrupted."""
    args = build_parser().parse_args(argv)
    rate_limits = dict(DEFAULT_RATE_LIMITS)
    rate_limits.update(dict(args.rate_limit))
    try:
        faults = Faults(
            error_rate=args.error_rate,
            drop_rate=args.drop_rate,
            stall_rate=args.stall_rate,
            stall_seconds=args.stall_seconds,
            latency=args.latency,
            seed=args.seed,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    simulator = Simulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        rate_limits=rate_limits,
        host=args.host,
        port=args.port,
        on_answer=_log if args.log else None,
    )
    simulator.faults = faults
    stop = threading.Event()
    # Ctrl-C and SIGTERM both stop it, whatever the disposition inherited: a shell without job control starts
    # background commands with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    simulator.start()
    try:  # from here on, any way out stops the server threads, or the process would never exit
        args.ca_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(simulator.ca_path, args.ca_out)
        ca = args.ca_out.resolve()
        limits = ", ".join(f"{api}={rate:g}/s" for api, rate in rate_limits.items() if rate) or "none"
        print(f"iTwin Platform simulator on {simulator.url} (rate limits: {limits}). Ctrl-C stops it.")
        print("Settings to use:")
        print(f"ITWIN_AUTHORITY={simulator.url}")
        print(f"ITWIN_API_URL={simulator.url}")
        print(f"ITWIN_CLIENT_ID={args.client_id}")
        print(f"ITWIN_CLIENT_SECRET={args.client_secret}")
        print(f"REQUESTS_CA_BUNDLE={ca}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        simulator.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
