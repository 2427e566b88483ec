"""bbp-notebooks-mockslurm: run the sites of a YAML config plus the HTTP control interface."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from bbp_notebooks.mockslurm.config import MockSlurmConfig, load_config
from bbp_notebooks.mockslurm.control import make_app
from bbp_notebooks.mockslurm.site import MockSite

log = logging.getLogger("bbp_notebooks.mockslurm")


async def serve(config: MockSlurmConfig, ready: asyncio.Event | None = None) -> None:
    sites = {site.name: MockSite(site) for site in config.sites}
    runner: web.AppRunner | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for site in sites.values():
            await site.start()
            print(
                f"site {site.config.name}: ssh {site.address}:{site.port} "
                f"first job id {site.config.first_job_id}",
                flush=True,
            )
        if config.control is not None:
            runner = web.AppRunner(make_app(sites), access_log=None)
            await runner.setup()
            tcp = web.TCPSite(runner, config.control.address, config.control.port)
            await tcp.start()
            print(f"control http://{config.control.address}:{config.control.port}/", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if runner is not None:
            await runner.cleanup()
        for site in sites.values():
            await site.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bbp-notebooks-mockslurm", description="SSH-served Slurm 22.05 emulator"
    )
    parser.add_argument("--config", type=Path, required=True, help="sites YAML file")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as error:
        print(f"bbp-notebooks-mockslurm: {error}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
