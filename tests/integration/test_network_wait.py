"""The agent's unit does not wait for network-online.target: the agent waits for it itself, once, before its first step
that needs the network - at once on a card without an offline bundle, after local setup on a card with one (its
packages and images install while the network comes up)."""

import json

from join_fakes.harness import run_agent

NETWORK_ONLINE = ["start", "network-online.target"]


def ordered_calls(fake):
    return [[record["tool"], *record["args"]] for record in map(json.loads, (fake.state / "calls.jsonl").read_text()
                                                                  .splitlines())]


def test_without_a_bundle_the_agent_waits_for_the_network_before_its_first_step(join_lab):
    result = run_agent(join_lab.node_root(), join_lab.fake)

    assert result.returncode == 0, result.stderr
    calls = ordered_calls(join_lab.fake)
    assert calls.index(["systemctl", *NETWORK_ONLINE]) == 0, "before the first package query"
    assert join_lab.fake.calls("systemctl").count(NETWORK_ONLINE) == 1, "once, however many steps need it"


def test_with_a_bundle_local_setup_is_done_before_the_network_is_waited_for(join_lab):
    root = join_lab.node_root()
    bundle = root / "var/lib/pi-image/bundle"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text(json.dumps({"kubernetes": "1.31.4", "platform": "linux/amd64",
                                                    "packages": [], "images": []}))

    result = run_agent(root, join_lab.fake)

    assert result.returncode == 0, result.stderr
    calls = ordered_calls(join_lab.fake)
    waited = calls.index(["systemctl", *NETWORK_ONLINE])
    assert calls.index(["systemctl", "enable", "--no-reload", "kubelet"]) < waited, "local setup's last step came first"
    assert waited < next(index for index, call in enumerate(calls) if call[:2] == ["kubeadm", "join"])
    assert join_lab.fake.calls("systemctl").count(NETWORK_ONLINE) == 1
