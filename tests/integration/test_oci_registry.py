"""The test registry serves real multi-platform images under mirror paths, as skopeo (an independent client) sees."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from oci_registry import INDEX, REF_NAME, Registry, make_image, parse, populate

from builder.run import run

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
    reason="needs the Debian packages docker-registry and skopeo (apt-get install docker-registry skopeo)",
)
IMAGES = ["registry.k8s.io/kube-proxy:v1.31.4", "registry.k8s.io/coredns/coredns:v1.11.3",
          "ghcr.io/flannel-io/flannel:v0.28.9"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Registry]:
    """One registry for the module, holding IMAGES."""
    with Registry(tmp_path_factory.mktemp("registry")) as running:
        populate(running, IMAGES, tmp_path_factory.mktemp("layouts"))
        yield running


def skopeo(*args: str) -> bytes:
    """Run skopeo (whatever the machine's trust policy says) and return its output."""
    return run(["skopeo", "--insecure-policy", *args]).stdout


def test_make_image_is_deterministic_and_labelled(tmp_path):
    first, again = make_image(tmp_path / "a", label="x"), make_image(tmp_path / "b", label="x")
    assert first.name == again.name
    assert make_image(tmp_path / "a", label="y").name != first.name
    inspected = json.loads(skopeo("inspect", "--override-arch", "arm64", f"oci:{first}"))
    assert (inspected["Architecture"], inspected["Os"]) == ("arm64", "linux")
    assert inspected["Labels"] == {"pi-image.test/label": "x"}


def test_references_are_spelled_out():
    assert parse("registry.k8s.io/coredns/coredns:v1.11.3") == ("registry.k8s.io", "coredns/coredns", "v1.11.3")
    assert parse("docker.io/library/busybox:1.36") == ("docker.io", "library/busybox", "1.36")
    assert parse("busybox:1.36") == parse("index.docker.io/busybox:1.36") == ("docker.io", "library/busybox", "1.36")
    assert parse("localhost:5000/pause") == ("localhost:5000", "pause", "latest")


def test_colliding_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"pause:3\.10"):
        populate(None, ["registry.k8s.io/pause:3.10", "quay.io/pause:3.10"], tmp_path)  # type: ignore[arg-type]


def test_a_registry_that_cannot_start_says_why(registry, tmp_path):
    second = Registry(tmp_path)
    second.port = registry.port
    with pytest.raises(RuntimeError, match=r"exited.*address already in use"):
        second.start()


def test_registry_serves_an_index_of_both_platforms(registry):
    index = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/kube-proxy:v1.31.4"))
    assert index["mediaType"] == INDEX
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{registry.host}/flannel-io/flannel"))
    assert tags["Tags"] == ["v0.28.9"]
    digests = {skopeo("inspect", "--tls-verify=false", "--format", "{{.Digest}}",
                      f"docker://{registry.host}/{name}") for name in ("kube-proxy:v1.31.4", "coredns/coredns:v1.11.3")}
    assert len(digests) == 2  # each reference is its own image


def test_one_platform_copies_out_as_a_named_archive(registry, tmp_path):
    archive = tmp_path / "kube-proxy.tar"
    skopeo("copy", "--override-arch", "arm64", "--src-tls-verify=false", "--quiet",
           f"docker://{registry.host}/kube-proxy:v1.31.4", f"oci-archive:{archive}:registry.k8s.io/kube-proxy:v1.31.4")
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        [descriptor] = index["manifests"]
        assert descriptor["annotations"][REF_NAME] == "registry.k8s.io/kube-proxy:v1.31.4"
        manifest = json.load(tar.extractfile(blob(descriptor)))
        config = json.load(tar.extractfile(blob(manifest["config"])))
    assert (config["architecture"], config["os"]) == ("arm64", "linux")
    assert config["config"]["Labels"]["pi-image.test/label"] == "registry.k8s.io/kube-proxy:v1.31.4"


def blob(descriptor: dict) -> str:
    """The path of `descriptor`'s blob inside an OCI layout."""
    return str(Path("blobs", *descriptor["digest"].split(":")))
