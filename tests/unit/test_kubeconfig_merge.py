"""`cluster kubeconfig -o FILE` into a kubeconfig the user already has: merged under the cluster's name."""

import pytest
import yaml

from builder.cluster.kubeconfig import merge_kubeconfig
from builder.errors import UserError

FETCHED = """apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster: {server: "https://192.168.6.11:6443", certificate-authority-data: Q0E=}
users:
- name: kubernetes-admin
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
contexts:
- name: kubernetes-admin@kubernetes
  context: {cluster: kubernetes, user: kubernetes-admin}
current-context: kubernetes-admin@kubernetes
"""
MINE = """apiVersion: v1
kind: Config
clusters:
- name: work
  cluster: {server: "https://work.example:6443"}
- name: homelab
  cluster: {server: "https://old:6443"}
users:
- name: me
  user: {token: x}
contexts:
- name: work
  context: {cluster: work, user: me}
current-context: work
"""


def test_an_existing_kubeconfig_keeps_its_entries_and_gains_the_clusters_context():
    merged = yaml.safe_load(merge_kubeconfig(MINE, FETCHED, "homelab", "~/.kube/config"))

    assert [c["name"] for c in merged["clusters"]] == ["work", "homelab"]
    assert merged["clusters"][1]["cluster"]["server"] == "https://192.168.6.11:6443", "the stale entry is replaced"
    assert [u["name"] for u in merged["users"]] == ["me", "homelab-admin"]
    assert merged["contexts"][-1] == {"name": "homelab", "context": {"cluster": "homelab", "user": "homelab-admin"}}
    assert merged["current-context"] == "work", "the user's current context stays"


def test_an_empty_kubeconfig_gets_the_cluster_as_its_current_context():
    merged = yaml.safe_load(merge_kubeconfig("", FETCHED, "homelab", "f"))
    assert merged["current-context"] == "homelab"


def test_a_file_that_is_not_a_kubeconfig_is_never_overwritten_without_force():
    with pytest.raises(UserError, match="is not a kubeconfig.*--force"):
        merge_kubeconfig("- a\n- list\n", FETCHED, "homelab", "notes.yaml")
