"""``bbp-notebooks-operator``: run the operator (the same as ``kopf run -m ...handlers``)."""

from __future__ import annotations

import argparse

import kopf

from bbp_notebooks.api.settings import OperatorSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    settings = OperatorSettings()
    from bbp_notebooks.operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=not settings.peering,
        priority=settings.priority,
        peering_name=settings.peering_name,
        clusterwide=not settings.watch_namespaces,
        namespaces=settings.watch_namespaces,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
