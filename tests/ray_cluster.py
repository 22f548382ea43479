"""Ray's own multi-node test cluster on this machine, as a process the tests drive through its stdin.

``python -m tests.ray_cluster NODES`` starts a head and NODES - 1 more nodes of one CPU each, all on
loopback, and prints one JSON line: ``{"address": ..., "nodes": [node ids, the head first]}``. Each line
it reads then is a command: ``remove NODE_ID`` kills that node at once (its raylet and its workers, as a
lost machine would be) and answers ``removed``. End of input shuts the cluster down.
"""

from __future__ import annotations

import json
import os
import sys

#: everything binds loopback: Ray's own switch for a cluster that stays on one machine
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

#: a lost node is noticed within about two seconds, not Ray's default of about half a minute
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
}


def main() -> None:
    from ray.cluster_utils import Cluster

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": SYSTEM_CONFIG},
    )
    nodes = [cluster.head_node]
    for _ in range(count - 1):
        nodes.append(cluster.add_node(num_cpus=1))
    cluster.wait_for_nodes()
    by_id = {n.node_id: n for n in nodes}
    print(json.dumps({"address": cluster.address, "nodes": [n.node_id for n in nodes]}), flush=True)
    try:
        for line in sys.stdin:
            word, _, arg = line.strip().partition(" ")
            if word == "remove" and arg in by_id:
                cluster.remove_node(by_id.pop(arg), allow_graceful=False)
                print("removed", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
