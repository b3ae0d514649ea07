"""`--set wifi.ssid=HomeNet`: one field of a mapping key, as `profiles --keys` lists it, changes that field only and
the mapping is checked whole; the Wi-Fi passphrase never comes from the command line, whole or as a field, and the
refusal never repeats it."""

from pathlib import Path

import pytest

from builder.config.profile_keys import key_reference
from builder.config.profiles import load_profile, parse_set
from builder.errors import UserError


def test_every_field_profiles_keys_lists_but_the_secret_one_can_be_set_alone():
    fields = [row for row in key_reference() if "." in row["key"]]
    assert {row["key"] for row in fields} >= {"wifi.ssid", "wifi.country", "network.dns"}
    for row in fields:
        if row["secret"]:
            continue
        assert parse_set((f"{row['key']}=x",)) == {row["key"]: "x"}


def test_fields_build_the_mapping_and_keep_what_the_profile_gives(tmp_path: Path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: worker-8g\nwifi: {ssid: Office, country: DE}\nnetwork: {interface: wlan0}\n")

    alone = load_profile("worker-8g", parse_set(("wifi.ssid=HomeNet", "wifi.country=GB")))
    over = load_profile(str(mine), parse_set(("wifi.ssid=HomeNet", "network.dns=[192.168.6.1, 1.1.1.1]")))

    assert alone["wifi"] == {"ssid": "HomeNet", "psk": None, "country": "GB"} and "wifi" in alone.explicit
    assert over["wifi"] == {"ssid": "HomeNet", "psk": None, "country": "DE"}
    assert over["network"] == {"interface": "wlan0", "address": None, "gateway": None,
                               "dns": ["192.168.6.1", "1.1.1.1"]}


def test_a_string_field_keeps_the_text_as_typed():
    assert load_profile("worker-8g", parse_set(("wifi.ssid=1234", "wifi.country=GB")))["wifi"]["ssid"] == "1234"
    assert load_profile("worker-8g", parse_set(("wifi.ssid=yes", "wifi.country=GB")))["wifi"]["ssid"] == "yes"


def test_the_passphrase_comes_as_a_field_from_elsewhere_and_is_checked():
    profile = load_profile("worker-8g", {**parse_set(("wifi.ssid=HomeNet", "wifi.country=GB")),
                                         "wifi.psk": "correct horse battery"})
    assert profile["wifi"]["psk"] == "correct horse battery"
    assert profile.public_values()["wifi"]["psk"] == "(set)"
    with pytest.raises(UserError, match="WPA passphrase has 8 to 63"):
        load_profile("worker-8g", {"wifi.ssid": "HomeNet", "wifi.country": "GB", "wifi.psk": "short"})


@pytest.mark.parametrize("assignment", ["wifi.psk=correct-horse-42",
                                        "wifi={ssid: a, psk: correct-horse-42, country: GB}",
                                        'wifi={"ssid": "a", "psk": "correct-horse-42"'])
def test_a_passphrase_on_the_command_line_is_refused_without_repeating_it(assignment):
    with pytest.raises(UserError) as refused:
        parse_set((assignment,))
    message = str(refused.value)
    assert "correct-horse-42" not in message and "\n" not in message
    assert "shell history" in message and "--wifi-psk-file FILE" in message and "--wifi-psk " in message


@pytest.mark.parametrize(("assignments", "said"), [
    (("wifi.bogus=1",), "'wifi' has no setting 'bogus' (it takes ssid, psk, country)"),
    (("wifi.sid=x",), "did you mean 'ssid'"),
    (("timezone.zone=UTC",), "'timezone' is not a mapping"),
    (("wfi.ssid=x",), "unknown key 'wfi.ssid' (did you mean 'wifi.ssid'?)"),
    (("wifi.ssid=HomeNet",), "'wifi' needs 'country' (regulatory domain, like GB) too: add --set wifi.country=VALUE"),
    (("wifi.country=Britain", "wifi.ssid=x"), "'wifi.country'"),
    (("network.dns=1.1.1.1",), "'network.dns' must be a list"),
])
def test_a_bad_field_is_one_line_naming_it(assignments, said):
    with pytest.raises(UserError) as refused:
        load_profile("worker-8g", parse_set(assignments))
    assert said in str(refused.value) and str(refused.value).startswith("--set")
