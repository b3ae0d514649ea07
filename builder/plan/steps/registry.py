"""Registry mirrors for containerd: one certs.d/HOST/hosts.toml per mirrored registry (config_path is set in the
runtime overlay's config.toml). The registry itself stays the fallback, so a mirror that lacks an image costs a
retry, not a node."""

from __future__ import annotations

from ...config.references import mirror_host
from ...errors import UserError
from .context import BuildContext

STEP = "registry-mirrors"
CERTS_DIR = "/etc/containerd/certs.d"
# the registry's own API host when it differs from its name
SERVERS = {"docker.io": "https://registry-1.docker.io"}


def plan(ctx: BuildContext) -> None:
    """hosts.toml for each of the profile's (and the cluster's) registry_mirrors."""
    mirrors = ctx.profile["registry_mirrors"]
    if not mirrors:
        return
    if ctx.profile["runtime"] != "containerd":
        raise UserError(f"registry_mirrors configure containerd, and this node runs {ctx.profile['runtime']}: drop "
                        "them (set docker's registry-mirrors with an --overlay) or use runtime: containerd")
    for registry, url in sorted(mirrors.items()):
        mirror_host(url)  # checked when the profile loaded; a URL is http(s)://HOST[:PORT]
        server = SERVERS.get(registry, f"https://{registry}")
        ctx.write(STEP, "root", f"{CERTS_DIR}/{registry}/hosts.toml",
                  f"# {registry} through its mirror (pi-image registry_mirrors); the registry itself is the fallback\n"
                  f'server = "{server}"\n\n[host."{url.rstrip("/")}"]\n  capabilities = ["pull", "resolve"]\n')
