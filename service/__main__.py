"""Command line: `python -m service [serve | check-config]`."""

from __future__ import annotations

import argparse
import sys

import msgspec

from service.settings import Settings, settings_or_exit


def serve(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        "service.app:app",
        host="0.0.0.0",
        port=settings.port,
        workers=settings.web_concurrency,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_keep_alive=100,
        timeout_graceful_shutdown=20,
        access_log=False,  # the service writes its own JSON access line
        log_level=settings.log_level,
    )


def check_config(settings: Settings) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(settings.public_view())).decode() + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP server on $PORT (the default)")
    commands.add_parser("check-config", help="print the effective settings, secrets masked; exit 2 if invalid")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    if args.command == "check-config":
        check_config(settings)
    else:
        serve(settings)


if __name__ == "__main__":
    main()
