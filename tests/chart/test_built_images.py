"""The images, built here with buildah from the Debian base debootstrap makes (no registry), carry
what their process imports and nothing it does not.

`scripts/build-images.sh` runs as `make images BASE=local` would; buildah's layer cache makes a
rebuild after a code change cost one layer per image. Each check runs inside the image (`buildah
run`, as the image's own user), so what is asserted is what the kubelet would start.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from chart.helmchart import REPO

# A cold build (debootstrap, then pip with a compiler) took 25 min here on two loaded cores; a
# rebuild after a code change about 2.5 min (one layer per image).
pytestmark = pytest.mark.timeout(3600)
TAG = "test"
IMAGES = ("operator", "hub", "mockslurm", "proxy")
# Every module of the process's own packages (and the named libraries) must import; the forbidden
# ones must be absent.
IMPORTS = """
import importlib, importlib.util, pkgutil, sys
for name in sys.argv[1].split(","):
    package = importlib.import_module(name)
    if name.startswith("bbp_notebooks."):
        for module in pkgutil.walk_packages(package.__path__, name + "."):
            importlib.import_module(module.name)
present = [name for name in sys.argv[2].split(",") if name and importlib.util.find_spec(name)]
assert not present, f"the image carries {present}"
print("ok")
"""
PROCESSES = {
    "operator": ("bbp_notebooks.operator,bbp_notebooks.ssh,kopf,gssapi", "kubernetes,jupyterhub"),
    "hub": ("bbp_notebooks.hub,jupyterhub,oauthenticator,gssapi", "kopf,asyncssh,kubernetes"),
    "mockslurm": ("bbp_notebooks.mockslurm", "kopf,kubernetes_asyncio,kubernetes,jupyterhub"),
}


def buildah(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ),
    )


@pytest.fixture(scope="module")
def built_images() -> dict[str, str]:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh")],
        env={**os.environ, "BASE": "local", "IMAGE_TAG": TAG},
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {name: f"localhost/bbp-notebooks/{name}:{TAG}" for name in IMAGES}


@pytest.fixture
def run_in(built_images: dict[str, str]) -> Iterator[object]:
    containers: list[str] = []

    def run(image: str, *argv: str) -> subprocess.CompletedProcess[str]:
        created = buildah("from", "--pull-never", built_images[image])
        assert created.returncode == 0, created.stderr
        containers.append(created.stdout.strip())
        return buildah("run", "--isolation", "chroot", containers[-1], "--", *argv)

    yield run
    for container in containers:
        buildah("rm", container)


@pytest.mark.parametrize("image", sorted(PROCESSES))
def test_each_image_imports_every_module_of_its_process_and_carries_nothing_else(
    image: str, run_in: object
) -> None:
    wanted, forbidden = PROCESSES[image]
    result = run_in(image, "python", "-c", IMPORTS, wanted, forbidden)  # type: ignore[operator]
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr[-3000:]


@pytest.mark.parametrize("image", IMAGES)
def test_every_image_runs_as_its_own_unprivileged_user(image: str, run_in: object) -> None:
    result = run_in(image, "id", "-u")  # type: ignore[operator]
    assert (result.returncode, result.stdout.strip()) == (0, "10001"), result.stderr


def test_the_operator_image_can_renew_kerberos_tickets(run_in: object) -> None:
    result = run_in("operator", "sh", "-c", "command -v kinit")  # type: ignore[operator]
    assert (result.returncode, result.stdout.strip()) == (0, "/usr/bin/kinit"), result.stderr


def test_the_proxy_image_runs_configurable_http_proxy(run_in: object) -> None:
    result = run_in("proxy", "configurable-http-proxy", "--version")  # type: ignore[operator]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split(".")[0].isdigit()
