"""``bbp-notebooks-operator``: run the operator (the same as ``kopf run -m ...handlers``)."""

from __future__ import annotations

import argparse
import sys

# The operator image installs no synchronous `kubernetes` client (pyproject's extra `operator`);
# a development environment does (extra `dev`, for the tools and tests). kopf imports it whenever
# it is installed, only to recognise its model objects, which this operator never hands to kopf:
# 17 MB of RSS. Refused here (a None entry makes `import kubernetes` raise ImportError, which
# kopf expects), so an operator run from a development environment (make dev, the tests,
# make bench) carries what the image carries.
if "kubernetes" not in sys.modules:
    sys.modules["kubernetes"] = None  # type: ignore[assignment]

import kopf  # noqa: E402  (after the refusal above)

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
