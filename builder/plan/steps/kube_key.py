"""The pkgs.k8s.io signing key, as the binary keyring apt's `signed-by=` expects (the repo line is an overlay); a node
installed from the upstream release (kube_install: release) uses no apt repository of Kubernetes, so gets none."""

from __future__ import annotations

from .context import BuildContext

STEP = "kube-key"
KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"


def plan(ctx: BuildContext) -> None:
    """Install the keyring (dearmored at build start, see builder.bases.kubekey)."""
    if ctx.kube_keyring is not None and not ctx.from_release:
        ctx.write(STEP, "root", KEYRING, ctx.kube_keyring)
