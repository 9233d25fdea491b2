"""mDNS discovery end to end: nodes started with no --bootstrap find each other and connect.

mDNS multicasts on every non-loopback interface, so the nodes never run in the machine's own
network: scenarios/mdns_pair.py runs under `unshare -rn` (a new user and network namespace,
no privileges needed), sets up a veth pair there and starts three nodes: `a` (--mdns), `b`
(`[p2p] mdns = true` in its config file) and `c`, the control, without mDNS. Where the kernel
refuses such a namespace the test is skipped, saying why.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import hubmesh_bin

SCRIPT = Path(__file__).parent / "scenarios" / "mdns_pair.py"
IP = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def namespace_refusal():
    """Why this machine cannot give the test a private network namespace; None if it can."""
    unshare = shutil.which("unshare")
    if unshare is None or IP is None:
        return "needs `unshare` (util-linux) and `ip` (iproute2)"
    probe = subprocess.run(
        [unshare, "-rn", IP, "link", "add", "hm0", "type", "veth", "peer", "name", "hm1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return (
            "cannot create a private network namespace with a veth pair "
            f"(`unshare -rn ip link add ... type veth`): {probe.stderr.strip()}"
        )
    return None


def log(data: Path) -> str:
    path = data.with_suffix(".log")
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def test_mdns_nodes_find_each_other_without_bootstrap(tmp_path):
    hubmesh_bin()  # a missing binary is an error, not a skip
    reason = namespace_refusal()
    if reason:
        pytest.skip(reason)

    out = subprocess.run(
        ["unshare", "-rn", sys.executable, str(SCRIPT), str(tmp_path)],
        # The checks below read the nodes' debug logs (libp2p_mdns, discoveries, no secrets).
        env={**os.environ, "RUST_LOG": "debug"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    tail = "\n".join(f"--- {n} ---\n{log(tmp_path / n)[-3000:]}" for n in "abc")
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{tail}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "setup_failed" not in result, result
    nodes = result["nodes"]
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    logs = {name: log(tmp_path / name) for name in nodes}

    # a and b found each other with mDNS alone and are connected. (Whether each side saw the
    # other's answer or one dialled first is a race; at least one side discovered the other.)
    assert result["found"], f"a and b never connected: {json.dumps(nodes, indent=1)}\n{tail}"
    for me, other in ((a, b), (b, a)):
        listed = {p["peer_id"]: p for p in me["mesh_peers"]["peers"]}
        assert other["peer_id"] in listed, me
        assert me["mesh_peers"]["counters"]["connected_peers"] == 1, me
    discovered = [
        f"peer discovered with mDNS peer={other['peer_id']}" in logs[name]
        for name, other in (("a", b), ("b", a))
    ]
    assert any(discovered), f"neither a nor b logged an mDNS discovery\n{tail}"
    # What mDNS reported is the namespace's interface address, never loopback.
    mdns_addrs = [
        line.split(" addr=")[1]
        for name in "ab"
        for line in logs[name].splitlines()
        if "peer discovered with mDNS" in line
    ]
    assert mdns_addrs and all(x.startswith("/ip4/10.213.0.1/tcp/") for x in mdns_addrs), mdns_addrs

    # The control: c, up before a and b started asking, neither announced itself nor looked.
    assert c["mesh_peers"]["peers"] == [], c
    assert c["mesh_peers"]["counters"]["connected_peers"] == 0, c
    for me in (a, b):
        assert c["peer_id"] not in {p["peer_id"] for p in me["mesh_peers"]["peers"]}, me
    uses_mdns = {name: "libp2p_mdns" in logs[name] for name in nodes}
    assert uses_mdns == {"a": True, "b": True, "c": False}, uses_mdns

    for name, node in nodes.items():
        assert node["exit"] == 0, f"{name} exited with {node['exit']}\n{logs[name][-3000:]}"
        token = (tmp_path / name / "admin.token").read_text().strip()
        leaked = token in logs[name]
        assert not leaked, f"the admin token appears in the log of {name}"
