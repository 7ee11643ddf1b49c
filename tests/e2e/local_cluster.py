"""A Ray cluster of several nodes on one machine for the end-to-end test: `ray start` per node on 127.0.0.1,
each with its own temp dir, ports, custom resources and scratch folder, token authentication on. Stopped
by the ids of its own processes (never `ray stop`: that would stop every Ray on the machine)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_ports(n: int, taken: set[int]) -> list[int]:
    """n distinct free ports, none in `taken` (which they join). The sockets stay bound until all n are
    chosen: one at a time, the kernel may hand the same port out twice (CI saw `ray start` refuse a
    runtime-env agent port equal to the client server's)."""
    held, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in taken:
                ports.append(port)
                taken.add(port)
    finally:
        for s in held:
            s.close()
    return ports


@dataclass
class Node:
    name: str
    root: Path
    resources: dict
    num_cpus: int
    worker_ports: tuple[int, int]  # each raylet hands out worker ports from its own range

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"


@dataclass
class LocalCluster:
    root: Path
    env: dict  # the environment every node starts with (auth, the object store's endpoint and keys)
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    taken: set[int] = field(default_factory=set)  # every port handed to a node of this cluster

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, node: Node, head: bool) -> None:
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        node.scratch.mkdir(parents=True, exist_ok=True)
        node_manager, object_manager, agent, agent_grpc, metrics, runtime_env, client = free_ports(7, self.taken)
        ports = [
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={node.worker_ports[0]}",
            f"--max-worker-port={node.worker_ports[1]}",
        ]
        role = (
            [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={client}",
                "--include-dashboard=true",
            ]
            if head
            else [f"--address=127.0.0.1:{self.gcs_port}"]
        )
        cmd = [
            RAY,
            "start",
            *role,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={node.num_cpus}",
            f"--resources={json.dumps(node.resources)}",
            f"--temp-dir={node.temp_dir}",
            "--disable-usage-stats",
            *ports,
        ]
        env = {**self.env, "R1V_SCRATCH_DIR": str(node.scratch)}  # the node's own scratch folder
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({node.name}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def start(self, nodes: list[Node]) -> LocalCluster:
        self.nodes = nodes
        self.gcs_port, self.dashboard_port = free_ports(2, self.taken)
        try:
            self._start(nodes[0], head=True)
            self.wait_for_dashboard()
            for node in nodes[1:]:
                self._start(node, head=False)
            self.wait_for_nodes(len(nodes))
        except BaseException:
            self.stop()
            raise
        return self

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {Path(self.env['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"}

    def wait_for_dashboard(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(f"{self.address}/api/version", headers=self.headers(), timeout=5).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the dashboard at {self.address} did not come up")

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        return [n for n in list_nodes(address=self.address, detail=True) if n.state == "ALIVE"]

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.alive_nodes()) >= n:
                return
            time.sleep(1)
        raise TimeoutError(f"{n} nodes did not join")

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those whose command line names one of its temp dirs, and their
        descendants (workers rename themselves `ray::...`; the job driver is a worker's child)."""
        roots = [str(node.temp_dir) for node in self.nodes]
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if any(root in cmdline for root in roots):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, timeout: float = 20) -> None:
        """Kill this cluster's processes by id (SIGKILL after `timeout`): the cluster is lost, not shut down."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=timeout)
        assert not self.processes(), "processes of the stopped cluster are still running"
