"""Wi-Fi that comes up on first boot with no screen: the regulatory domain, and the radio unblocked.

The network itself is an overlay of the target's (overlays/netplan-wifi or overlays/networkmanager-wifi, both 0600:
they hold the passphrase). Here:
- the country as `cfg80211.ieee80211_regdom=XX` on the kernel command line of every target (what Raspberry Pi
  Imager does; netplan's `regulatory-domain` says it too where the image's netplan takes it);
- on Raspberry Pi OS, which blocks the on-board Wi-Fi until a country is set: systemd-rfkill's saved state of that
  radio set to unblocked (as Imager's customization does), and NetworkManager's own switch turned back on where
  pi-gen turned it off (`WirelessEnabled=false` in NetworkManager.state, written when an image has no country).
"""

from __future__ import annotations

import re

from ...config.profiles import Profile
from .context import BuildContext

STEP = "wifi"
RFKILL_DIR = "/var/lib/systemd/rfkill"
NM_STATE = "/var/lib/NetworkManager/NetworkManager.state"


def kernel_args(profile: Profile) -> list[str]:
    """The kernel arguments the profile's Wi-Fi needs (the kernel step writes them)."""
    wifi = profile["wifi"]
    return [f"cfg80211.ieee80211_regdom={wifi['country']}"] if wifi else []


def plan(ctx: BuildContext) -> None:
    """Unblock the Wi-Fi radio where the OS blocks it until a country is set."""
    if not ctx.profile["wifi"] or not ctx.target.wifi_rfkill_states:
        return
    saved = [f"{RFKILL_DIR}/{name}" for name in ctx.view.listdir("root", RFKILL_DIR) if name.endswith(":wlan")]
    for path in dict.fromkeys([*ctx.target.wifi_rfkill_states, *saved]):
        ctx.write(STEP, "root", path, "0\n")
    state = ctx.view.read_text("root", NM_STATE)
    if state is not None and re.search(r"^WirelessEnabled\s*=\s*false\s*$", state, re.M):
        ctx.edit(STEP, "root", NM_STATE, re.sub(r"^WirelessEnabled\s*=.*$", "WirelessEnabled=true", state,
                                                  flags=re.M))
