"""``python -m mistral_nbenv.testing``: serve the loopback Mistral API until Ctrl-C."""

from __future__ import annotations

import argparse
import threading

from mistral_nbenv.testing.server import MistralTestServer


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the server, print its URL and wait for Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m mistral_nbenv.testing",
        description="Serve a fake Mistral API (chat, streaming, embeddings, FIM, models).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    args = parser.parse_args(argv)
    server = MistralTestServer(
        args.host, args.port, latency=args.latency, verbose=not args.quiet
    ).start()
    print(f"Mistral test server on {server.url} (use it as server_url; Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
