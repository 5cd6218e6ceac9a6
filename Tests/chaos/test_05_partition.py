# SPDX-License-Identifier: Apache-2.0
"""Two executors on separate network namespaces; one of them is cut off with `ip link set down`.

Executor B runs in the namespace scripts/chaos made (TSUBAME_CHAOS_NETNS): it reaches PostgreSQL and its servers
(an extra sshd of the fleet listening on the machine's end of the veth pair) only over that link. Executor A runs
on the machine itself. B takes a run of 4 targets that print a line every 100 ms for 5 minutes; once their output
shows through the API, A is started, B's link is set down, and a run on the loopback fleet is queued for A.

Per the product's rules (README, "executor(s)"): a target whose executor disappears is failed by another executor
after its lease; it is not run again (the cut-off executor may still be running it: a second run could overlap
the first). So "finishes once" means:
- A fails B's 4 targets within lease + reaper interval (+ the idle-transaction timeout), each with the error
  naming B and one "was lost" line as its last line; attempt 1, one "connected" line; every chunk acknowledged
  before the cut is still there and stdout has no gap;
- A runs the work queued after the cut, once, while B is cut off;
- when the link comes back, B finds its leases lost and stops the remote processes (checked on the server), and
  nothing it still wanted to write changes the database: the failed targets and their logs stay exactly as A left
  them; seq has no gap.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from typing import Iterator

import pytest

from chaos import (CONNECTED_LINE, LOST_LINE, Executors, Made, assert_queue_settled, assert_seq_without_gaps,
                   drain_foreign_work, figure, full_log, no_executor_running, psql, psql_value, run, system_lines,
                   targets_of, text_of, wait_all_finished, wait_for)
from executor import Fleet, pid_alive
from helpers import Client

NETNS = os.environ.get("TSUBAME_CHAOS_NETNS", "")
NETNS_IF = os.environ.get("TSUBAME_CHAOS_NETNS_IF", "")
NS_ADDR = os.environ.get("TSUBAME_CHAOS_NETNS_ADDR", "")
HOST_ADDR = os.environ.get("TSUBAME_CHAOS_NETNS_HOST_ADDR", "")
TICKS = 3000  # 5 minutes: the remote processes end only when stopped


@pytest.fixture(scope="module")
def executors(admin_token: Client) -> Iterator[Executors]:
    if not NETNS:
        pytest.skip(os.environ.get("TSUBAME_CHAOS_NETNS_SKIP") or "no network namespace (run through scripts/chaos)")
    no_executor_running()
    drain_foreign_work(admin_token)
    ex = Executors("partition")
    yield ex
    problems = ex.stop_all()
    no_executor_running()
    assert not problems, problems


class VethSshd:
    """One more sshd of the fleet, listening on the machine's end of the veth pair, for clients in the namespace."""

    def __init__(self, fleet: Fleet) -> None:
        import socket
        with socket.socket() as s:
            s.bind((HOST_ADDR, 0))
            self.port = s.getsockname()[1]
        # Named like the fleet's own, so that scripts/chaos stops it too should this test die.
        self.pidfile = fleet.dir / f"sshd-{self.port}.pid"
        r = subprocess.run(["/usr/sbin/sshd", "-f", str(fleet.dir / "sshd_config"), "-E", str(fleet.dir / f"sshd-{self.port}.log"),
                            "-o", f"ListenAddress={HOST_ADDR}:{self.port}", "-o", f"PidFile={self.pidfile}",
                            "-o", f"AllowUsers {fleet.user}@{NS_ADDR}"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        wait_for(self.pidfile.exists, 10, "the veth sshd started")
        self.pid = int(self.pidfile.read_text().split()[0])

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _link(state: str) -> None:
    subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", NETNS_IF, state], check=True, timeout=30)


def _snapshot(ids: list[int]) -> list[list[str]]:
    """The targets' rows and every chunk of the executions, as PostgreSQL has them."""
    ids_s = ",".join(map(str, ids))
    return psql("""
        SELECT t.id, t.status, coalesce(t.error, ''), coalesce(t.finished_at::text, ''), t.attempt,
               coalesce(t.executor_id, ''), coalesce(t.lease_expires_at::text, '')
        FROM execution_targets t WHERE t.execution_id = ANY(string_to_array(:'ids', ',')::bigint[]) ORDER BY t.id
        """, ids=ids_s) + psql("""
        SELECT execution_id, seq, stream, md5(data) FROM log_chunks
        WHERE execution_id = ANY(string_to_array(:'ids', ',')::bigint[]) ORDER BY execution_id, seq
        """, ids=ids_s) + psql("""
        SELECT id, status, last_seq, output_bytes, coalesce(finished_at::text, '') FROM executions
        WHERE id = ANY(string_to_array(:'ids', ',')::bigint[]) ORDER BY id
        """, ids=ids_s)


@pytest.mark.timeout(240)
def test_cut_off_executor_is_reaped_and_fenced(executors: Executors, made: Made, fleet: Fleet,
                                               admin_token: Client) -> None:
    pg_port = os.environ["TSUBAME_TEST_PG_PORT"]
    db_name = os.environ["TSUBAME_TEST_DATABASE_URL"].rsplit("/", 1)[1]
    sshd = VethSshd(fleet)
    pids_dir = fleet.shared / f"chaos-partition-{uuid.uuid4().hex}"
    pids_dir.mkdir()
    pids_dir.chmod(0o1777)
    try:
        servers = [made.server(sshd.port, host=HOST_ADDR, max_concurrent=10) for _ in range(4)]
        job = made.job(servers, (f'echo $$ > {pids_dir}/$$.pid\n'
                                 f'i=0\nwhile [ $i -lt {TICKS} ]; do i=$((i+1)); echo "tick $i"; sleep 0.1; done\n'))
        b = executors.start({"TSUBAME_DATABASE_URL": f"postgresql://postgres@{HOST_ADDR}:{pg_port}/{db_name}",
                             "TSUBAME_EXECUTOR_CAPACITY": "4"},
                            name=f"partitioned-{uuid.uuid4().hex[:4]}", prefix=["ip", "netns", "exec", NETNS])
        cut_off = run(admin_token, job["id"])["id"]

        def flowing() -> bool:
            if psql_value("SELECT count(*) FROM execution_targets WHERE execution_id = :id AND status = 'running' "
                          "AND executor_id = :'ex'", id=cut_off, ex=b.id) != "4":
                return False
            chunks = full_log(admin_token, cut_off)
            return all(text_of(chunks, s["id"], "stdout").count("\n") >= 3 for s in servers)

        wait_for(flowing, 60, "executor B runs the 4 targets and their output shows")
        remote = [int(p.stem) for p in pids_dir.glob("*.pid")]
        assert len(remote) == 4, remote
        a = executors.start()
        acknowledged = full_log(admin_token, cut_off)
        _link("down")
        cut = time.monotonic()
        loopback = made.job([made.server(p) for p in fleet.ports[:3]], 'echo "after the cut"\n')
        during = [run(admin_token, loopback["id"])["id"] for _ in range(3)]

        wait_all_finished([cut_off], timeout=60)
        reaped_s = time.monotonic() - cut
        lease = int(os.environ.get("TSUBAME_LEASE_SECONDS", "30"))
        # Not before the lease ran out (B heartbeated at most lease/6 before the cut); well within lease + the
        # reaper's interval (lease/2) + the idle-transaction timeout, with room for a loaded machine.
        assert lease * 5 / 6 - 0.5 <= reaped_s <= 3 * lease + 15, f"reaped {reaped_s:.1f} s after the cut (lease {lease} s)"
        wait_all_finished(during, timeout=60)
        for e in during:
            body = admin_token.ok("GET", f"/api/v1/executions/{e}")
            assert body["status"] == "succeeded", body
            chunks = full_log(admin_token, e)
            assert text_of(chunks, None, "stdout") == "after the cut\n" * 3, chunks
        assert psql_value("""
            SELECT count(*) FROM execution_targets WHERE execution_id = ANY(string_to_array(:'ids', ',')::bigint[])
              AND (executor_id <> :'a' OR attempt <> 1)""", ids=",".join(map(str, during)), a=a.id) == "0"

        targets = targets_of([cut_off])
        chunks = full_log(admin_token, cut_off)
        seen = {c["seq"]: c for c in chunks}
        for c in acknowledged:
            assert seen.get(c["seq"]) == c, f"acknowledged chunk {c} is now {seen.get(c['seq'])}"
        for t in targets:
            assert (t["status"], t["attempt"], t["exit_code"]) == ("failed", 1, None), t
            assert f"({b.id}) stopped heartbeating" in t["error"], t
            lines = system_lines(chunks, t["server_id"])
            assert len([x for x in lines if CONNECTED_LINE.match(x)]) == 1, lines
            assert LOST_LINE.match(lines[-1]) and LOST_LINE.match(lines[-1])[1] == b.id, lines
            out = text_of(chunks, t["server_id"], "stdout").splitlines()
            assert out == [f"tick {i}" for i in range(1, len(out) + 1)], "a gap in the ticks"
        assert_seq_without_gaps([cut_off] + during)
        before_heal = _snapshot([cut_off])

        # Cut off, B could not stop anything: its remote processes still run.
        assert all(pid_alive(p) for p in remote), "the remote processes ended during the partition"
        # The link comes back: B finds its leases gone and stops the remote processes; its late writes are fenced.
        _link("up")
        healed = time.monotonic()
        wait_for(lambda: not any(pid_alive(p) for p in remote), 90, "B stops the remote processes after the heal",
                 interval=0.25)
        stopped_s = time.monotonic() - healed
        wait_for(lambda: b.running and psql_value("SELECT count(*) FROM executors WHERE id = :'id' AND "
                                                  "last_seen > now() - interval '2 seconds'", id=b.id) == "1",
                 60, "B heartbeats again")
        time.sleep(1.0)  # what B would still write
        assert _snapshot([cut_off]) == before_heal, "a late write of the cut-off executor changed the database"
        b.stop()
        assert _snapshot([cut_off]) == before_heal, "B's stop changed the database"
        assert_queue_settled([cut_off] + during)
        figure("partition", targets_cut_off=len(targets), lease_seconds=lease,
               reaped_after_seconds=round(reaped_s, 2), runs_during_cut=len(during),
               remote_stopped_after_heal_seconds=round(stopped_s, 2), late_writes_changed_nothing=True)
    finally:
        if NETNS:
            subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", NETNS_IF, "up"], timeout=30)
        for p in pids_dir.glob("*.pid"):
            try:
                os.kill(int(p.stem), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sshd.stop()
