"""Installing an --offline card's packages fast: one `dpkg --install` of the bundle's checked files (no resolver, no
source, no download), what a power cut left installed not done again, apt-get only when dpkg alone cannot, man-db's
trigger paused while it runs and always put back, and a runtime its package started as pi-image configured it not
restarted."""

import hashlib
import json
from pathlib import Path

import pytest

from firstboot import localsetup
from firstboot.bundle import BUNDLE_DIR
from firstboot.commands import CommandResult
from firstboot.errors import SetupFailed
from firstboot.packages import MAN_DB_AUTO_UPDATE, MAN_DB_PAUSED, Apt

DEBS = (("containerd", "1.6.20~ds1-1+deb12u3"), ("runc", "1.1.5+ds1-1+deb12u1"), ("conntrack", "1:1.4.7-1+b2"))


class FakeNode:
    """dpkg, dpkg-query, apt-get, systemctl and ctr on a fresh node: `installed` is dpkg's database ({package:
    version}); `dpkg --install` of a file adds its package unless `dpkg_fails`; man-db's flag is looked at while
    dpkg or apt-get runs."""

    def __init__(self, root, installed=None, dpkg_fails=False, apt_fails=False):
        self.root = Path(root)
        self.installed = dict(installed or {})
        self.dpkg_fails = dpkg_fails
        self.apt_fails = apt_fails
        self.calls = []
        self.man_db_flag_during_install = []

    def run(self, argv, input_text=None, timeout=None):
        self.calls.append(argv)
        if argv[0] == "dpkg-query":
            lines = ["{} {} ii".format(package, self.installed[package]) for package in argv[3:]
                     if package in self.installed]
            return CommandResult(argv, 0 if len(lines) == len(argv) - 3 else 1, "\n".join(lines) + "\n", "")
        if argv[0] in ("dpkg", "apt-get") and ("--install" in argv or "install" in argv):
            self.man_db_flag_during_install.append((self.root / MAN_DB_AUTO_UPDATE.lstrip("/")).exists())
            if self.dpkg_fails if argv[0] == "dpkg" else self.apt_fails:
                return CommandResult(argv, 1, "", "dpkg: regarding runc.deb containing runc, pre-dependency "
                                                  "problem:\nE: Sub-process /usr/bin/dpkg returned an error code (1)")
            for path in (arg for arg in argv if arg.endswith(".deb")):
                package, version, _ = Path(path).name.split("_")
                self.installed[package] = version.replace("%3a", ":")
        return CommandResult(argv, 0, "", "")

    def available(self, tool):
        return True


def write_bundle(root: Path) -> None:
    directory = root / BUNDLE_DIR.lstrip("/")
    (directory / "debs").mkdir(parents=True)
    manifest = {"kubernetes": "1.31.4", "platform": "linux/amd64", "packages": [], "images": []}
    for package, version in DEBS:
        deb = directory / "debs" / "{}_{}_amd64.deb".format(package, version.replace(":", "%3a"))
        deb.write_bytes(b"!<arch>\n" + package.encode())
        manifest["packages"].append({"file": "debs/" + deb.name, "package": package, "version": version,
                                     "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()})
    (directory / "bundle.json").write_text(json.dumps(manifest))


def setup_for(root, commands):
    setup = localsetup.LocalSetup(str(root), commands, runtime_packages=["containerd", "runc", "conntrack"],
                                  sleep=lambda s: None)
    setup.runtime.problem = lambda: None  # containerd answers as pi-image configured it
    return setup


def test_the_bundle_is_installed_by_one_dpkg_call_keeping_our_conffiles(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path)

    setup_for(tmp_path, node).install_packages()

    [install] = [call for call in node.calls if "--install" in call]
    assert install[:3] == ["dpkg", "--force-confold", "--install"]
    assert sorted(Path(arg).name.split("_")[0] for arg in install[3:]) == ["conntrack", "containerd", "runc"]
    assert node.calls[0][0] == "dpkg-query" and ["dpkg", "--force-confold", "--configure", "-a"] in node.calls
    assert node.calls.index(["dpkg", "--force-confold", "--configure", "-a"]) < node.calls.index(install), \
        "what a power cut interrupted is finished first"
    assert not [call for call in node.calls if call[0] == "apt-get"], "no resolver, no archive"
    assert node.installed == dict(DEBS)


def test_after_a_power_cut_only_what_dpkg_does_not_have_at_its_version_is_installed_again(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path, installed={"containerd": DEBS[0][1], "runc": "1.0.0-1"})  # runc: another version

    setup_for(tmp_path, node).install_packages()

    [install] = [call for call in node.calls if "--install" in call]
    assert sorted(Path(arg).name.split("_")[0] for arg in install[3:]) == ["conntrack", "runc"]


def test_a_node_that_has_every_package_runs_no_install_at_all(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path, installed=dict(DEBS))

    Apt(node, root=str(tmp_path)).install_files(
        [(package, version, "/x/{}_{}_amd64.deb".format(package, version)) for package, version in DEBS], [])

    assert not [call for call in node.calls if "--install" in call or call[0] == "apt-get"]


def test_when_dpkg_alone_cannot_apt_get_installs_the_same_files_with_no_source(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path, dpkg_fails=True)

    setup_for(tmp_path, node).install_packages()

    [install] = [call for call in node.calls if call[:2] == ["apt-get", "install"]]
    assert "Dpkg::Options::=--force-confold" in install
    assert any(arg.startswith("Dir::Etc::SourceList=") for arg in install), "apt-get has nothing to download from"
    assert sorted(Path(arg).name.split("_")[0] for arg in install if arg.endswith(".deb")) == [
        "conntrack", "containerd", "runc"]
    assert ["apt-get", "update"] not in [call[:2] for call in node.calls]


def test_when_neither_can_the_failure_says_what_dpkg_said_and_is_retried(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path, dpkg_fails=True, apt_fails=True)

    with pytest.raises(SetupFailed, match="apt-get install failed: .*pre-dependency problem") as failure:
        setup_for(tmp_path, node).install_packages()
    assert failure.value.retry


def test_dpkg_waits_while_another_process_holds_the_lock(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path)
    replies = [CommandResult([], 2, "", "dpkg: error: dpkg frontend lock was locked by another process with pid 9")]
    plain_run = node.run

    def run(argv, input_text=None, timeout=None):
        if "--install" in argv and replies:
            node.calls.append(argv)
            return replies.pop()
        return plain_run(argv, input_text, timeout)

    node.run = run
    pauses = []
    Apt(node, sleep=pauses.append, root=str(tmp_path)).install_files(
        [(package, version, "/x/{}_{}_amd64.deb".format(package, version)) for package, version in DEBS], [])

    assert len([call for call in node.calls if "--install" in call]) == 2 and len(pauses) == 1
    assert not [call for call in node.calls if call[0] == "apt-get"], "a busy lock is waited for, not worked around"


def test_man_dbs_trigger_is_paused_while_packages_install_and_put_back_after(tmp_path):
    write_bundle(tmp_path)
    flag = tmp_path / MAN_DB_AUTO_UPDATE.lstrip("/")
    flag.parent.mkdir(parents=True)
    flag.write_text("")
    node = FakeNode(tmp_path)

    setup_for(tmp_path, node).install_packages()

    assert node.man_db_flag_during_install == [False]
    assert flag.exists() and not (tmp_path / MAN_DB_PAUSED.lstrip("/")).exists()


def test_man_dbs_flag_is_put_back_even_when_the_install_fails(tmp_path):
    write_bundle(tmp_path)
    flag = tmp_path / MAN_DB_AUTO_UPDATE.lstrip("/")
    flag.parent.mkdir(parents=True)
    flag.write_text("")

    with pytest.raises(SetupFailed):
        setup_for(tmp_path, FakeNode(tmp_path, dpkg_fails=True, apt_fails=True)).install_packages()
    assert flag.exists()


def test_a_run_killed_while_man_db_was_paused_leaves_it_to_the_next_run_to_put_back(tmp_path):
    write_bundle(tmp_path)
    paused = tmp_path / MAN_DB_PAUSED.lstrip("/")
    paused.parent.mkdir(parents=True)
    paused.write_text("")
    node = FakeNode(tmp_path, installed=dict(DEBS, kubelet="1", kubeadm="1", kubectl="1"))  # it had finished

    setup_for(tmp_path, node).install_packages()

    assert (tmp_path / MAN_DB_AUTO_UPDATE.lstrip("/")).exists() and not paused.exists()


def test_a_node_without_man_db_installs_all_the_same(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path)

    setup_for(tmp_path, node).install_packages()

    assert node.man_db_flag_during_install == [False]
    assert not (tmp_path / MAN_DB_AUTO_UPDATE.lstrip("/")).exists(), "a flag that was not there is not made"


def test_a_runtime_its_package_started_as_configured_is_enabled_without_a_reload_not_restarted(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path)

    setup_for(tmp_path, node).install_packages()

    systemctl = [call[1:] for call in node.calls if call[0] == "systemctl"]
    assert ["enable", "--no-reload", "containerd"] in systemctl  # its postinst reloaded systemd already
    assert not [call for call in systemctl if call[0] in ("restart", "daemon-reload")]


def test_a_runtime_that_does_not_answer_after_its_install_is_restarted(tmp_path):
    write_bundle(tmp_path)
    node = FakeNode(tmp_path)
    setup = setup_for(tmp_path, node)
    answers = ["containerd does not answer (no socket)"]
    setup.runtime.problem = lambda: answers.pop() if answers else None

    setup.install_packages()

    assert ["systemctl", "restart", "containerd"] in node.calls


class ConfiguringNode(FakeNode):
    """FakeNode that also looks at man-db's flag while `dpkg --configure` runs."""

    def __init__(self, root):
        FakeNode.__init__(self, root)
        self.man_db_flag_during_configure = []

    def run(self, argv, input_text=None, timeout=None):
        if "--configure" in argv:
            self.man_db_flag_during_configure.append((self.root / MAN_DB_AUTO_UPDATE.lstrip("/")).exists())
        return FakeNode.run(self, argv, input_text, timeout)


def test_packages_the_build_host_unpacked_are_configured_by_dpkg_with_man_db_paused_and_nothing_installed(tmp_path):
    directory = tmp_path / BUNDLE_DIR.lstrip("/")
    directory.mkdir(parents=True)
    (directory / "bundle.json").write_text(json.dumps({
        "kubernetes": "1.31.4", "platform": "linux/amd64", "images": [],
        "packages": [{"package": package, "version": version, "unpacked": True} for package, version in DEBS]}))
    flag = tmp_path / MAN_DB_AUTO_UPDATE.lstrip("/")
    flag.parent.mkdir(parents=True)
    flag.write_text("")
    node = ConfiguringNode(tmp_path)

    setup_for(tmp_path, node).install_packages()

    assert ["dpkg", "--force-confold", "--configure", "-a"] in node.calls
    assert node.man_db_flag_during_configure == [False]
    assert not [call for call in node.calls if "--install" in call or call[0] == "apt-get"]
    assert flag.exists()
