"""Beyond one process group on one host: two torchrun launches, one per "node", meet through a
c10d rendezvous on the loopback address, exactly as two machines would (README: the commands
for a real cluster). Each node runs one process; the records of both ranks must arrive."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid

from ac_bench.distributed import RECORDS_FILE, launch_env, load_records

VARIANT = "full-sdpa"
TIMEOUT_S = 240


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous host binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(port: int, run_id: str, out) -> list[str]:
    """One node's launch: the README's multi-machine command with the loopback address."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id,
            "-m", "ac_bench.distributed", "--flavor", "tiny", "--variants", VARIANT, "--out", str(out)]


def test_two_nodes_meet_through_a_c10d_rendezvous_on_loopback(tmp_path):
    port, run_id = free_port(), uuid.uuid4().hex[:8]
    outs = [tmp_path / f"node{i}" for i in range(2)]
    # An earlier launch with four ranks left rank3.json in each folder: kept, and rank 0 says so.
    stale = b'[{"left": "by an earlier launch"}]'
    for out in outs:
        out.mkdir()
        (out / "rank3.json").write_bytes(stale)
    nodes = [subprocess.Popen(node_command(port, run_id, out), env=launch_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for out in outs]
    results, stdouts = [], []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=TIMEOUT_S)
            results.append((node.returncode, stderr))
            stdouts.append(stdout)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [rc for rc, _ in results] == [0, 0], "\n".join(err[-3000:] for _, err in results)
    # Each node wrote its own rank's file; the node that got rank 0 holds the merged records.
    assert all((out / "rank3.json").read_bytes() == stale for out in outs)
    per_node = [sorted(p.name for p in out.glob("rank*.json") if p.name != "rank3.json") for out in outs]
    assert sorted(sum(per_node, [])) == ["rank0.json", "rank1.json"] and all(len(n) == 1 for n in per_node)
    rank0_dir = outs[[n == ["rank0.json"] for n in per_node].index(True)]
    records = load_records(rank0_dir)
    assert [(r.variant, r.world_size, r.rank) for r in records] == [(VARIANT, 2, 0), (VARIANT, 2, 1)]
    assert records[0].forward_kept_bytes == records[1].forward_kept_bytes
    assert records[0].resident_bytes == records[1].resident_bytes
    for out in outs:
        for record in json.loads(next(p for p in out.glob("rank*.json") if p.name != "rank3.json").read_text()):
            assert record["world_size"] == 2
    assert not (outs[1 - outs.index(rank0_dir)] / RECORDS_FILE).exists()
    note = (f"note: rank3.json in {rank0_dir} is from an earlier launch with more ranks, kept as it was; "
            f"this launch's are rank0.json to rank1.json and {RECORDS_FILE}")
    assert note in stdouts[outs.index(rank0_dir)], stdouts[outs.index(rank0_dir)][-2000:]
    assert "note:" not in stdouts[1 - outs.index(rank0_dir)]


def test_stale_rank_files_are_those_beyond_the_world_size_in_rank_order(tmp_path):
    from ac_bench.distributed import stale_rank_files
    for name in ("rank0.json", "rank1.json", "rank10.json", "rank2.json", "rankX.json", "records.json"):
        (tmp_path / name).write_text("[]")
    assert [p.name for p in stale_rank_files(tmp_path, 2)] == ["rank2.json", "rank10.json"]
    assert stale_rank_files(tmp_path, 11) == []
