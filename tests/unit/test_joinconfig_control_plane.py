"""What a control plane of several gives kubeadm: its JoinConfiguration's controlPlane section in both schemas, and
kube-vip's static Pod with the kubeconfig it needs while init runs and after (firstboot/kubevip.py)."""

import stat

import pytest
import yaml

from builder.plan.kube_vip import kube_vip_manifest
from firstboot import joinconfig, kubevip
from firstboot.errors import SetupFailed

KEY = "0123456789abcdef" * 4


@pytest.mark.parametrize("version, api", [("v1.31.4", "kubeadm.k8s.io/v1beta4"), ("v1.30.2", "kubeadm.k8s.io/v1beta3")])
def test_a_control_plane_joins_with_its_own_api_endpoint_and_the_certificate_key(version, api):
    text = joinconfig.render(version, "192.168.6.10:16443", "abcdef.0123456789abcdef", ["sha256:" + "0" * 64],
                             "pi-master2", "192.168.6.12", "containerd", certificate_key=KEY)

    config = yaml.safe_load(text)

    assert config["apiVersion"] == api
    assert config["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "192.168.6.12", "bindPort": 16443},
                                      "certificateKey": KEY}
    assert config["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "192.168.6.10:16443"


def test_a_worker_joins_without_a_control_plane_section():
    text = joinconfig.render("v1.31.4", "192.168.6.10:6443", "abcdef.0123456789abcdef", ["sha256:" + "0" * 64],
                             "pi-worker1", "192.168.6.15", "containerd")
    assert "controlPlane" not in yaml.safe_load(text)


@pytest.mark.parametrize("version, during_init", [("v1.28.15", kubevip.ADMIN_CONF),
                                                  ("v1.29.0", kubevip.SUPER_ADMIN_CONF),
                                                  ("v1.33.2", kubevip.SUPER_ADMIN_CONF)])
def test_kube_vip_mounts_super_admin_conf_while_init_runs_from_1_29_and_admin_conf_after(tmp_path, version,
                                                                                        during_init):
    card = tmp_path / "kube-vip.yaml"
    card.write_bytes(kube_vip_manifest("192.168.6.10", 6443))
    installed = tmp_path / "etc/kubernetes/manifests/kube-vip.yaml"

    kubevip.install(str(tmp_path), str(card), kubevip.kubeconfig_during_init(version))
    during = yaml.safe_load(installed.read_text())
    kubevip.install(str(tmp_path), str(card))
    after = yaml.safe_load(installed.read_text())

    assert during["spec"]["volumes"] == [{"name": "kubeconfig", "hostPath": {"path": during_init}}]
    assert during["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == kubevip.ADMIN_CONF, "where kube-vip reads"
    assert after == yaml.safe_load(card.read_text())
    assert stat.S_IMODE(installed.stat().st_mode) == 0o600
    assert sorted(path.name for path in installed.parent.iterdir()) == ["kube-vip.yaml"]


def test_a_card_without_kube_vips_manifest_is_one_line_naming_it(tmp_path):
    missing = "cannot read kube-vip's manifest .*kube-vip.yaml.*rebuild the card"
    with pytest.raises(SetupFailed, match=missing) as failed:
        kubevip.install(str(tmp_path), str(tmp_path / "kube-vip.yaml"))
    assert failed.value.retry is False


def test_a_manifest_that_mounts_no_admin_conf_is_refused(tmp_path):
    card = tmp_path / "kube-vip.yaml"
    card.write_text("apiVersion: v1\nkind: Pod\nspec:\n  volumes:\n  - hostPath:\n"
                    "      path: /etc/kubernetes/other.conf\n")
    with pytest.raises(SetupFailed, match="mounts no /etc/kubernetes/admin.conf"):
        kubevip.install(str(tmp_path), str(card))
