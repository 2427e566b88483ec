"""One dev/test topology: the examples are generated from devtools/topology.py and agree with it."""

from __future__ import annotations

from pathlib import Path

import yaml

from bbp_notebooks.api.models import SlurmSiteSpec
from bbp_notebooks.devtools import topology
from bbp_notebooks.mockslurm.config import MockSlurmConfig

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_examples_are_generated_from_the_topology() -> None:
    assert topology.main(["--root", str(REPO), "--check"]) == 0, "run `make examples`"


def test_the_example_sites_and_the_example_mock_describe_the_same_sites() -> None:
    examples = topology.examples()
    sites = [doc for doc in yaml.safe_load_all(examples["sites.yaml"]) if doc]
    mock = MockSlurmConfig.model_validate(yaml.safe_load(examples["mockslurm-sites.yaml"]))
    specs = {site["metadata"]["name"]: SlurmSiteSpec.model_validate(site["spec"]) for site in sites}
    assert list(specs) == [site.name for site in mock.sites]
    for served in mock.sites:
        spec = specs[served.name]
        assert (spec.frontend.host, spec.frontend.port) == (served.address, served.port)
        assert [(p.name, p.default) for p in spec.partitions] == [
            (p.name, p.default) for p in served.partitions
        ]
        assert (spec.account_policy.value == "Required") == served.require_account
        assert served.user(spec.monitor_user) is not None


def test_every_emulated_site_is_on_its_own_loopback_address() -> None:
    addresses = [site.address for site in topology.EMULATED_SITES]
    real = [topology.REAL_SLURM_SHARED_ADDRESS, *topology.REAL_SLURM_ADDRESSES.values()]
    assert len(set(addresses + real)) == len(addresses + real)
    assert all(address.startswith("127.") for address in addresses + real)
