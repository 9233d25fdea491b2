"""mDNS discovery between real nodes, inside a private network namespace.

Run by tests/py/test_mdns.py as `unshare -rn python mdns_pair.py WORKDIR`: a new user and
network namespace, so that no multicast ever reaches the machine's real interfaces. The
namespace starts with a down loopback only; this script brings up `lo` (the nodes' HTTP
gateways) and a veth pair hm0/hm1 with 10.213.0.1/24 on hm0 and the multicast range routed
to it. libp2p-mdns skips loopback addresses, so hm0 is the one interface the nodes announce
on; the kernel's multicast loopback hands every packet a node sends on hm0 to the other
nodes' sockets in the namespace, and the copy that leaves hm0 arrives on hm1, inside the
namespace too.

The nodes listen for p2p on 10.213.0.1 (and, as conftest.start_node does for every node, on
127.0.0.1, which mDNS must not announce). Three nodes, none with --bootstrap: `c` without mDNS (the control, started first), `a` with
--mdns and `b` with `[p2p] mdns = true` in a config file. The script polls
`/api/mesh/peers` until `a` and `b` list each other and are connected (or the deadline
passes), prints what every node reports as one JSON object on stdout, and always stops the
nodes. The test judges the result; the data directories and logs stay in WORKDIR.
"""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import start_node  # noqa: E402

IFACE_ADDR = "10.213.0.1"
P2P = f"/ip4/{IFACE_ADDR}/tcp/0"
DEADLINE = 20.0


def ip(*args):
    tool = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "ip"
    subprocess.run([tool, *args], check=True, capture_output=True, text=True)


def setup_network():
    ip("link", "set", "lo", "up")
    ip("link", "add", "hm0", "type", "veth", "peer", "name", "hm1")
    ip("addr", "add", f"{IFACE_ADDR}/24", "dev", "hm0")
    ip("link", "set", "hm0", "multicast", "on", "up")
    ip("link", "set", "hm1", "up")
    ip("route", "add", "224.0.0.0/4", "dev", "hm0")


def peers(node):
    with urllib.request.urlopen(f"{node.url}/api/mesh/peers", timeout=5) as r:
        return json.loads(r.read())


def peer_ids(body):
    return {p["peer_id"] for p in body["peers"]}


def main(workdir: Path):
    try:
        setup_network()
    except subprocess.CalledProcessError as e:
        print(json.dumps({"setup_failed": f"{' '.join(e.cmd)}: {e.stderr.strip()}"}))
        return
    config = workdir / "b.toml"
    config.write_text("[p2p]\nmdns = true\n")
    nodes = {}
    result = {"nodes": {}}
    try:
        nodes["c"] = start_node(workdir / "c", "--p2p-listen", P2P)
        nodes["a"] = start_node(workdir / "a", "--p2p-listen", P2P, "--mdns")
        nodes["b"] = start_node(workdir / "b", "--p2p-listen", P2P, "--config", str(config))
        a, b = nodes["a"], nodes["b"]
        started = time.monotonic()
        while True:
            seen = {name: peers(node) for name, node in nodes.items()}
            # `peers` also lists peers known but not connected: the counters say connected.
            found = (
                b.info["peer_id"] in peer_ids(seen["a"])
                and a.info["peer_id"] in peer_ids(seen["b"])
                and seen["a"]["counters"]["connected_peers"] >= 1
                and seen["b"]["counters"]["connected_peers"] >= 1
            )
            if found or time.monotonic() - started > DEADLINE:
                break
            time.sleep(0.05)
        result["found"] = found
        result["seconds"] = round(time.monotonic() - started, 2)
        for name, node in nodes.items():
            result["nodes"][name] = {
                "peer_id": node.info["peer_id"],
                "p2p": node.info["p2p"],
                "mesh_peers": seen[name],
            }
    finally:
        for name, node in nodes.items():
            try:
                code = node.terminate()
            except AssertionError:
                code = "ignored SIGTERM"
            result["nodes"].setdefault(name, {})["exit"] = code
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
