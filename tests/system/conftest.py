"""Boot-to-join system test fixtures: a real Debian rootfs in the Ubuntu raspi layout, built once per session.

Run with `tests/system/run.sh` (installs the tools, then `python -m pytest -m system tests/system`). Needs root
(debootstrap, chroot, a root-owned tree for mkfs.ext4 -d). The rootfs is cached per machine (see rootfs.py); the
figures (debootstrap, build, each boot's milestones, the wall time of stories with several guests and of the suite)
are printed at the end and written to <basetemp>/system-figures.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # join_fakes

TOOLS = ("debootstrap", "qemu-system-x86_64", "debugfs", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "chroot",
         "apt-ftparchive", "gpg", "dpkg-deb")
REPO = Path(__file__).resolve().parents[2]
FIGURES: dict = {"boots": []}
SHARED_GUEST_MODULES = {"test_boot_joins.py", "test_boot_static_network.py", "test_boot_control_plane.py",
                        "test_boot_offline.py", "test_boot_several_masters.py", "test_boot_upgrade.py"}
# The longest story (two guests at once) starts first, so that the other worker's shorter ones fill in around it; the
# other two-guest story (offline) waits for it if it comes while it runs (lab.ClusterLab.two_guests).
FIRST_MODULES = ("test_boot_several_masters.py", "test_boot_control_plane.py")
# Added to the rootfs with guest/test-tools/ before the build: the monitor, package-lock and enroll units enabled;
# masked, what a headless guest without a screen does not need and TCG pays seconds for.
GUEST_LINKS = {
    "/etc/systemd/system/multi-user.target.wants/pi-image-test-monitor.service":
        "/etc/systemd/system/pi-image-test-monitor.service",
    "/etc/systemd/system/multi-user.target.wants/pi-image-test-package-locks.service":
        "/etc/systemd/system/pi-image-test-package-locks.service",
    "/etc/systemd/system/multi-user.target.wants/pi-image-test-enroll.service":
        "/etc/systemd/system/pi-image-test-enroll.service",
    "/etc/systemd/system/getty@tty1.service": "/dev/null",
    "/etc/systemd/system/getty-static.service": "/dev/null",
    "/etc/systemd/system/e2scrub_reap.service": "/dev/null",
}
# Serial console lines of the agent -> their figure: seconds from QEMU's start (when a test watched for them).
MILESTONES = {"joined the cluster": "qemu_start_to_joined", "kubeadm init done": "qemu_start_to_init_done",
              "token endpoint started": "qemu_start_to_endpoint_started"}
# Goal 4 (issue 28): the first power-on of an --offline card against the preinstalled base's, the network install's
# beside it. Each figure: (test, or the module of a story its tests share; node; milestone) at the node's boot 1.
# The preinstalled worker is the clean join among the stories on that base (BUILD {"base": "preinstalled"}:
# test_boot_faults, test_boot_control_plane): its endpoint is up and nothing is injected before its join (the others
# wait for a late master or join twice on purpose). The offline worker boots beside its master, both at once: when
# the master's endpoint starts after the worker is ready, the worker's figure is the master's; the masters' kubeadm
# init (offline; preinstalled, in the control-plane story) is the pair where neither waits for the other node.
FIRST_BOOTS = {
    "offline_worker_joined": ("test_boot_offline", "pi-worker1", "qemu_start_to_joined"),
    "offline_master_init_done": ("test_boot_offline", "pi-master1", "qemu_start_to_init_done"),
    "offline_master_endpoint_started": ("test_boot_offline", "pi-master1", "qemu_start_to_endpoint_started"),
    "network_install_joined": ("test_boot_joins", "pi-worker1", "qemu_start_to_joined"),
    "preinstalled_joined": ("test_power_cut_just_after_joining_the_next_boot_does_not_join_again", "pi-worker1",
                            "qemu_start_to_joined"),
    "preinstalled_master_init_done": ("test_boot_control_plane", "pi-master1", "qemu_start_to_init_done"),
    # a worker with the bundle on its own (the release path's card: runtime debs, release binaries, images) against
    # the fake cluster, as the preinstalled one: goal 4's like-for-like pair, booted side by side
    "offline_release_worker_joined": ("test_an_offline_release_card_joins_with_nothing_but_the_cluster_reachable",
                                      "pi-worker1", "qemu_start_to_joined"),
}
FIRST_BOOT_RATIOS = {
    "offline_worker_over_preinstalled": ("offline_worker_joined", "preinstalled_joined"),
    "network_install_over_preinstalled": ("network_install_joined", "preinstalled_joined"),
    "offline_master_init_over_preinstalled": ("offline_master_init_done", "preinstalled_master_init_done"),
    "offline_release_worker_over_preinstalled": ("offline_release_worker_joined", "preinstalled_joined"),
}
_SESSION_START = time.monotonic()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    items.sort(key=lambda item: item.path.parent != here or item.path.name not in FIRST_MODULES)
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    reason = ("the boot test needs root (debootstrap, chroot)" if os.geteuid() != 0
              else f"missing {', '.join(missing)}: run tests/system/run.sh, it installs them" if missing else None)
    for item in items:
        if item.path.parent == here:
            item.add_marker(pytest.mark.system)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """The signed apt archive (real containerd/runc, stand-in kube packages) served on 127.0.0.1 for the session."""
    from apt_repo import AptRepository, SigningKey, release_tree, runtime_debs, standin_debs
    from lab import free_port
    from rootfs import cached_rootfs

    from builder.config.runtimes import RELEASE_DEPENDENCIES
    from builder.plan.release import companions

    base = tmp_path_factory.mktemp("archive")
    figures = FIGURES.setdefault("build", {})
    started = time.monotonic()
    rootfs = cached_rootfs()
    figures["rootfs_seconds"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    key = SigningKey(base / "gnupg")
    repo = AptRepository(base / "repo", key, runtime_debs(rootfs), standin_debs(base / "standins"),
                         more=runtime_debs(rootfs, RELEASE_DEPENDENCIES["apt"]))
    release_tree(repo.root, {minor: companions(minor) for minor in ("1.30", "1.31", "1.32")})
    repo.port = free_port()
    repo.serve(repo.port)
    figures["archive_seconds"] = round(time.monotonic() - started, 1)
    yield repo
    repo.stop()
    key.close()


@pytest.fixture(scope="session")
def base_images(tmp_path_factory, archive):
    """Ubuntu-layout images of the cached Debian rootfs with the test tools and the archive's apt sources:

        stock         no container runtime, no kube packages: first boot installs them, as on every stock Pi image
        preinstalled  the same .debs (containerd, runc, kube 1.31) installed beforehand by apt in a chroot, as on a
                      Jetson image that ships its runtime; for the stories about the join protocol, which then skip
                      a minute and a half of emulated dpkg
    """
    from apt_repo import PREINSTALLED
    from rootfs import cached_rootfs, rootfs_facts
    from ubuntu_layout import install_debs, make_image, stage_tree

    base = tmp_path_factory.mktemp("base-image")
    figures = FIGURES.setdefault("build", {})
    rootfs = cached_rootfs()
    facts = rootfs_facts(rootfs)
    figures["rootfs_made"] = {key: facts.get(key) for key in ("key", "debootstrap_seconds", "total_seconds")}
    tools = Path(__file__).parent / "guest" / "test-tools"
    overlays = [(tools, GUEST_LINKS), (archive.guest_files(base / "apt", archive.port), {})]
    images = {}
    for name in ("stock", "preinstalled"):
        started = time.monotonic()
        stage = stage_tree(rootfs, overlays, base / f"stage-{name}", copy=name == "preinstalled")
        if name == "preinstalled":
            install_debs(stage, archive.debs(PREINSTALLED))
        images[name] = make_image(stage, base / f"ubuntu-22.04-raspi-like-{name}.img")
        shutil.rmtree(stage)
        figures[f"base_image_{name}_seconds"] = round(time.monotonic() - started, 1)
    yield images
    for image in images.values():
        image.unlink()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1 holding small real images (amd64 and arm64) under the names kubeadm
    1.31.4 and the pod network use: what an --offline build fetches through its registry_mirrors."""
    from apt_repo import KUBEADM_IMAGES, pod_network_images
    from oci_registry import Registry, populate

    base = tmp_path_factory.mktemp("registry")
    with Registry(base / "registry").start() as running:
        populate(running, [*KUBEADM_IMAGES["1.31.4"], *pod_network_images()], base / "images")
        yield running


def offline_args(archive, registry) -> tuple[str, ...]:
    """`build --offline` as a user behind a firewall with a local mirror runs it: the image's archives (10.0.2.2 to
    a guest) reached by the build host at 127.0.0.1, the registries through the mirror."""
    mirrors = {"registry.k8s.io": registry.url, "ghcr.io": registry.url}
    return ("--offline", "--set", f"package_mirrors={{http://10.0.2.2:{archive.port}: http://127.0.0.1:{archive.port}}}",
            "--set", f"registry_mirrors={json.dumps(mirrors)}")


def release_args(archive, tree: str = "release") -> tuple[str, ...]:
    """`build --set kube_install=release` with the test archive's release downloads (apt_repo.release_tree; `tree`
    "release-tampered" serves a kubeadm that is not what its .sha256 says) as the node's sources, which the build
    host reaches at 127.0.0.1 (package_mirrors)."""
    device = f"http://10.0.2.2:{archive.port}"
    return ("--set", "kube_install=release", "--set", f"kube_release_url={device}/{tree}",
            "--set", f"crictl_url={device}/cri-tools", "--set", f"cni_plugins_url={device}/cni-plugins",
            "--set", f"package_mirrors={{{device}: http://127.0.0.1:{archive.port}}}")


def build_cluster(base_image: Path, archive, dest: Path, version: str = "1.31",
                  nodes: tuple[tuple[str, ...], ...] | None = None, init_args: tuple[str, ...] = (),
                  add_args: tuple[str, ...] = (), build_args: tuple[str, ...] = (), vip: str | None = None):
    """`pi-image cluster init`, `cluster add-node` of each of `nodes` ((name, profile, *its own add-node
    arguments); default pi-worker1 as a worker-8g), then `pi-image build --cluster DIR --all` of `base_image` into
    `dest`, as a user builds a whole cluster: a cluster on 10.0.2.2 (the host) at Kubernetes `version`, its kube
    repository the test archive.
    `init_args`, `add_args` (each node) and `build_args` go to `cluster init`, `cluster add-node` and `build`.
    With `vip`, the API server and the endpoint are at that virtual address of the subnet (`cluster init --vip`),
    the host (10.0.2.2) its gateway; the guests reach the VIP's ports through guestfwd."""
    from join_fakes.harness import make_ca
    from lab import NODE, ClusterBuild, free_port, pi_image

    nodes = nodes or ((NODE, "worker-8g"),)
    dest.mkdir(parents=True, exist_ok=True)
    api_port, endpoint_port = free_port(), free_port()
    cluster_dir = dest / "cluster"
    # the host's fake API server stands in front of the control plane, as a VIP would
    where = ("--vip", vip, "--gateway", "10.0.2.2") if vip else ("--api-server-vip",)
    pi_image("cluster", "init", str(cluster_dir), "--api-server", f"{vip or '10.0.2.2'}:{api_port}",
             "--endpoint", f"{vip or '10.0.2.2'}:{endpoint_port}", "--kubernetes-version", version,
             "--node-subnet", "10.0.2.0/24", *where, *init_args)
    for node, profile, *own_args in nodes:
        pi_image("cluster", "add-node", str(cluster_dir), node, "--profile", profile, *add_args, *own_args)
    ca_cert = dest / "ca.crt"
    ca_hash = make_ca(ca_cert)
    started = time.monotonic()
    pi_image("build", "--base", str(base_image), "--cluster", str(cluster_dir), "--all",
             "--kube-key", str(archive.key.armored), "--set", f"kube_repo_url={archive.kube_repo_url(archive.port)}",
             "--no-login", *build_args, "-o", str(dest))
    figures = {"pi_image_build_seconds": round(time.monotonic() - started, 1)}
    images = {node: dest / f"{node}.img" for node, *_ in nodes}
    return ClusterBuild(images, cluster_dir, ca_cert, ca_hash, api_port, endpoint_port, figures, version)


@pytest.fixture(scope="session")
def build_for(base_images, archive, tmp_path_factory, request):
    """Factory: the cluster build of one base image ("stock" or "preinstalled") for a set of build_cluster()
    options, made once per session."""
    builds = {}

    def build(base="stock", offline=False, release=None, **options):
        key = json.dumps([base, offline, release, options], sort_keys=True)
        if offline:  # the registry is started only for the stories that need it
            options["build_args"] = (*options.get("build_args", ()),
                                     *offline_args(archive, request.getfixturevalue("registry")))
        if release:  # "release" or "release-tampered": the release path's downloads (release_args)
            options["build_args"] = (*options.get("build_args", ()), *release_args(archive, release))
        if key not in builds:
            builds[key] = build_cluster(base_images[base], archive, tmp_path_factory.mktemp("build"), **options)
            FIGURES.setdefault("builds", []).append(dict(builds[key].figures, base=base, options=options))
        return builds[key]

    yield build
    if not request.session.testsfailed:
        for made in builds.values():
            for image in made.images.values():
                image.unlink()  # images are large; after a failure they stay for a look


@pytest.fixture(scope="module")
def node_build(request, build_for):
    """What a test module's stories boot: the build its BUILD dict asks for (build_for's arguments), else
    pi-worker1 as a worker-8g at Kubernetes 1.31 of the stock base."""
    return build_for(**getattr(request.module, "BUILD", {}))


@pytest.fixture(scope="session")
def story_figures():
    """Where a story that boots several guests appends its figures ({"test", "wall_seconds", ...})."""
    return FIGURES.setdefault("stories", [])


@pytest.fixture
def system_lab(node_build, tmp_path, request):
    """A scenario's private image + cluster copy, fake cluster and fake API server; the endpoint is not started."""
    from lab import SystemLab

    yield from _lab(SystemLab, node_build, tmp_path, request.node.name, request.session)


@pytest.fixture(scope="module")
def module_lab(node_build, tmp_path_factory, request):
    """Like system_lab, shared by the tests of one module (a story told in several steps: power on, then reboot)."""
    from lab import SystemLab

    yield from _lab(SystemLab, node_build, tmp_path_factory.mktemp("lab"), request.module.__name__, request.session)


@pytest.fixture
def lab_of(build_for, tmp_path, request):
    """Factory: a SystemLab of the build `build_for(**options)` makes, for a module whose stories boot different
    builds (cleaned up, and its boots' figures kept, as system_lab's)."""
    from lab import SystemLab

    made = []

    def make(**options):
        world = _lab(SystemLab, build_for(**options), tmp_path / f"lab-{len(made)}", request.node.name,
                     request.session)
        made.append(world)
        return next(world)

    yield make
    for world in made:
        next(world, None)


@pytest.fixture(scope="module")
def cluster_lab(node_build, tmp_path_factory, request):
    """Every node of the module's build, the fake cluster behind the fake API server, no endpoint on the host (a
    control-plane node serves its own); shared by the tests of one module."""
    from lab import ClusterLab

    yield from _lab(ClusterLab, node_build, tmp_path_factory.mktemp("lab"), request.module.__name__, request.session)


def _lab(kind, node_build, base: Path, name: str, session):
    failed_before = session.testsfailed
    world = kind(base, node_build)
    yield world
    world.close()
    for power_on in world.power_ons:
        report = world.guest_report(power_on.number, None, power_on.node)
        FIGURES["boots"].append(dict(boot_figures(name, power_on.number, power_on.guest, report), node=power_on.node))
    if session.testsfailed == failed_before:
        for image in world.images.values():
            image.unlink()  # the serial logs and the cluster directory stay


def boot_figures(test: str, number: int, guest, report: dict | None) -> dict:
    """How long a power-on took: QEMU start to the agent's milestones that the test watched for (host clock);
    systemd start and kernel start to the agent's exit, systemd start to the agent's start and to network-online.target
    (the guest's monotonic clock, from its report)."""
    entry = {"test": test, "boot": number, "qemu_seconds": round(guest.elapsed(), 1)}
    for pattern, name in MILESTONES.items():
        if pattern in guest.seen:
            entry[name] = round(guest.seen[pattern], 1)
    unit, manager = (report or {}).get("unit", {}), (report or {}).get("manager", {})
    exited = int(unit.get("ExecMainExitTimestampMonotonic") or 0)
    if exited and unit.get("Result") == "success":
        userspace = int(manager["UserspaceTimestampMonotonic"])
        entry["kernel_start_to_agent_done"] = round(exited / 1e6, 1)
        entry["systemd_start_to_agent_done"] = round((exited - userspace) / 1e6, 1)
        entry["systemd_start_to_agent_start"] = round(
            (int(unit["ExecMainStartTimestampMonotonic"]) - userspace) / 1e6, 1)
        online = int((report or {}).get("network_online", {}).get("ActiveEnterTimestampMonotonic") or 0)
        if online:
            entry["systemd_start_to_network_online"] = round((online - userspace) / 1e6, 1)
    return entry


def first_boot_ratios(figures: dict) -> dict:
    """Goal 4's figures from a run's figures: each of FIRST_BOOTS (seconds from QEMU's start) and FIRST_BOOT_RATIOS;
    what the run left out is left out."""
    result = {}
    for name, (story, node, milestone) in FIRST_BOOTS.items():
        seconds = next((boot[milestone] for boot in figures.get("boots", []) if boot["test"].split(".")[-1] == story
                        and boot.get("node") == node and boot["boot"] == 1 and milestone in boot), None)
        if seconds:
            result[name] = seconds
    for name, (measured, reference) in FIRST_BOOT_RATIOS.items():
        if measured in result and reference in result:
            result[name] = round(result[measured] / result[reference], 2)
    return result


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (run.sh -n 2): a module whose tests share one guest (module_lab) runs whole, in order, in one
    worker; every other test is a unit of its own; a worker gets its next unit only when it starts its last test
    (xdist queues two ahead, which can leave one worker with two boots to go while the other has nothing). xdist's own
    loadgroup cannot group on pytest 9, where nodeids are read-only."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedGuestScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::")[0]
            return module if Path(module).name in SHARED_GUEST_MODULES else nodeid

        def _reschedule(self, node):
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
            elif self._pending_of(self.assigned_work[node]) <= 1:  # a worker runs a test once it has the next
                self._assign_work_unit(node)

    return SharedGuestScheduling(config, log)


def pytest_sessionfinish(session):
    """Under pytest-xdist, a worker hands its figures to the controller (see pytest_testnodedown)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["system_figures"] = json.dumps(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    worker = json.loads(node.workeroutput.get("system_figures", "{}") or "{}")
    FIGURES["boots"] += worker.get("boots", [])
    if "build" in worker:
        FIGURES.setdefault("workers", []).append(worker["build"])
    FIGURES.setdefault("builds", []).extend(worker.get("builds", []))
    FIGURES.setdefault("stories", []).extend(worker.get("stories", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput") or not (FIGURES["boots"] or "build" in FIGURES or "builds" in FIGURES):
        return
    FIGURES["suite_wall_seconds"] = round(time.monotonic() - _SESSION_START, 1)
    FIGURES["boots"].sort(key=lambda boot: (boot["test"], boot.get("node", ""), boot["boot"]))
    FIGURES["first_boot"] = first_boot_ratios(FIGURES)
    text = json.dumps(FIGURES, indent=2)
    terminalreporter.section("boot-to-join figures")
    terminalreporter.write_line(text)
    path = Path(config._tmp_path_factory.getbasetemp()) / "system-figures.json"
    path.write_text(text + "\n")
    terminalreporter.write_line(f"(also in {path})")
