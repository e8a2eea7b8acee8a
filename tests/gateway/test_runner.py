"""The script runner on its own: real processes, no network."""

import asyncio
import os
import time
from pathlib import Path

import pytest
from support import process_gone, process_group_alive, wait_for

from gateway.runner import ScriptFailure, run_script

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).parent / "scripts"


def run(argv, stdin=b"", timeout_s=5.0, max_output_bytes=1 << 20, env=None, cwd=None):
    return asyncio.run(
        run_script(
            argv,
            stdin=stdin,
            env=env or dict(os.environ),
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            cwd=cwd,
        )
    )


def test_stdin_verbatim_and_output(tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value, NULs included
    env = dict(os.environ, COAPDEV_DATA_DIR=str(tmp_path))
    result = run(["python3", str(SCRIPTS / "record_stdin.py")], stdin=payload, env=env)
    assert (tmp_path / "received.bin").read_bytes() == payload
    assert b'"length": 1048576' in result.stdout


def test_timeout_kills_the_whole_group(tmp_path):
    env = dict(os.environ, COAPDEV_DATA_DIR=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(ScriptFailure) as info:
        run([str(SCRIPTS / "sleep_forever.sh")], timeout_s=0.5, env=env)
    assert info.value.kind == "timeout"
    assert time.monotonic() - started < 3
    pgid = int((tmp_path / "sleeper.pid").read_text())
    child = int((tmp_path / "sleeper-child.pid").read_text())
    assert not process_group_alive(pgid)
    assert process_gone(child)


def test_script_runs_start_no_thread_and_leave_no_descriptor():
    """Each run is a process, its pipes and a pidfd on the event loop: asyncio's own
    subprocess support (before Python 3.12) starts a thread per child to wait for it."""
    import threading

    async def many() -> tuple[int, int, set[int]]:
        threads = set()
        # (the first run opens what is kept for every run: ns_last_pid's descriptor)
        env = dict(os.environ)
        await run_script(["true"], stdin=b"", env=env, timeout_s=5, max_output_bytes=100)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            task = asyncio.ensure_future(
                run_script(
                    ["/bin/sh", "-c", "sleep 0.05; echo hi"],
                    stdin=b"",
                    env=dict(os.environ),
                    timeout_s=5,
                    max_output_bytes=100,
                )
            )
            await asyncio.sleep(0.02)  # while it runs
            threads.add(threading.active_count())
            assert (await task).stdout == b"hi\n"
        return before, len(os.listdir("/proc/self/fd")), threads

    before, after, threads = asyncio.run(many())
    assert threads == {threading.active_count()}
    assert after == before


def test_nonzero_exit_gives_short_reason_without_stderr():
    with pytest.raises(ScriptFailure) as info:
        run([str(SCRIPTS / "fail.sh")])
    assert info.value.kind == "exit"
    assert str(info.value) == "fail.sh exited with status 3"


def test_exit_65_is_bad_input_with_script_output():
    with pytest.raises(ScriptFailure) as info:
        run([str(SCRIPTS / "reject.sh")])
    assert info.value.kind == "bad-input" and str(info.value) == "payload must be a number"


def test_output_over_limit_is_killed():
    started = time.monotonic()
    with pytest.raises(ScriptFailure) as info:
        run(["python3", str(SCRIPTS / "big_output.py")], max_output_bytes=100_000)
    assert info.value.kind == "too-large"
    assert time.monotonic() - started < 5


def test_missing_program():
    with pytest.raises(ScriptFailure) as info:
        run(["/nonexistent/program"])
    assert info.value.kind == "start" and "cannot start" in str(info.value)


def test_no_shell_interprets_arguments(tmp_path):
    marker = tmp_path / "pwned"
    result = run(["echo", f"$(touch {marker})", "; rm -rf /", "`id`"])
    assert result.stdout == f"$(touch {marker}) ; rm -rf / `id`\n".encode()
    assert not marker.exists()


# --- a script is done when it exits; nothing of it outlives its answer ----------------


def _descendant(tmp_path: Path) -> int:
    pidfile = tmp_path / "descendant.pid"
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the script recorded no descendant"
        time.sleep(0.02)
    return int(pidfile.read_text().split()[-1])


@pytest.mark.parametrize("mode", ["keep-stdout", "setsid", "daemon"])
def test_a_script_is_done_when_it_exits_and_its_descendants_are_killed(tmp_path, mode):
    env = dict(os.environ, COAPDEV_DATA_DIR=str(tmp_path))
    started = time.monotonic()
    result = run([str(SCRIPTS / "detach.sh"), mode], timeout_s=10, env=env)
    elapsed = time.monotonic() - started
    assert result.stdout == f"answered {mode}\n".encode()
    assert elapsed < 3, f"answered after {elapsed:.1f} s: waited for the pipes, not the exit"
    descendant = _descendant(tmp_path)
    deadline = time.monotonic() + 3
    while not process_gone(descendant):
        assert time.monotonic() < deadline, f"descendant {descendant} ({mode}) outlived the script"
        time.sleep(0.05)


def test_no_descriptor_leaks_from_scripts_that_detach(tmp_path):
    env = dict(os.environ, COAPDEV_DATA_DIR=str(tmp_path))

    async def many(n: int) -> None:
        for i in range(n):
            mode = ("keep-stdout", "setsid", "daemon")[i % 3]
            await run_script(
                [str(SCRIPTS / "detach.sh"), mode],
                stdin=b"x",
                env=env,
                timeout_s=10,
                max_output_bytes=1000,
            )

    async def scenario() -> tuple[int, int]:
        await many(3)  # warm up (the event loop's own descriptors)
        before = len(os.listdir("/proc/self/fd"))
        await many(60)
        return before, len(os.listdir("/proc/self/fd"))

    before, after = asyncio.run(scenario())
    assert after <= before, f"descriptors {before} -> {after}"


def test_scripts_run_in_the_given_directory_and_inherit_only_stdio(tmp_path):
    import json

    work = tmp_path / "work"
    work.mkdir()
    keep = open(tmp_path / "secret", "w")  # a descriptor of this process, not for scripts
    try:
        result = run(["python3", str(SCRIPTS / "fds.py")], env=dict(os.environ), cwd=str(work))
    finally:
        keep.close()
    seen = json.loads(result.stdout)
    assert seen["cwd"] == str(work)
    inherited = {fd: target for fd, target in seen["fds"].items() if int(fd) > 2}
    # the only other descriptor is the one listing /proc/self/fd
    assert all(target.startswith("/proc/") for target in inherited.values()), inherited


def test_a_descendant_the_first_walk_missed_is_killed_by_the_second(monkeypatch):
    """A process in the middle of execve shows an empty environment for a moment, so one walk
    over /proc can miss it (1 in 1 200 detaching scripts under load): a second walk follows."""
    import subprocess

    from gateway.scripts import tree as runner

    tag = "second-sweep-test"
    child = subprocess.Popen(
        ["sleep", "1000"],
        env=runner.tagged_environment(dict(os.environ), tag),
        start_new_session=True,
    )
    real = runner.process_tree
    walks = []

    def first_walk_misses(*tags):
        walks.append(tags)
        return set() if len(walks) == 1 else real(*tags)

    monkeypatch.setattr(runner, "process_tree", first_walk_misses)

    script = subprocess.Popen(["true"], start_new_session=True)
    script.wait()  # the script has exited; its descendant lives on in a session of its own

    async def scenario() -> None:
        runner.kill_tree(script.pid, tag)
        assert child.poll() is None  # the first walk missed it
        await asyncio.sleep(runner.RESWEEP_S + 0.3)

    try:
        asyncio.run(scenario())
        assert child.wait(timeout=2) == -9
        assert tag in walks[1]  # with any other tag still waiting for its second walk
    finally:
        child.kill()
        child.wait()


def test_a_walk_reads_the_environment_only_of_processes_younger_than_the_run(monkeypatch):
    """The tag carries when its run started, so the walk over /proc costs one read per older
    process (its stat) and still finds the run's detached descendants."""
    import subprocess

    from gateway.scripts import tree as runner

    tag = runner.new_tag()
    child = subprocess.Popen(
        ["sh", "-c", "setsid sleep 1000 & wait"],
        env=runner.tagged_environment(dict(os.environ), tag),
        start_new_session=True,
    )
    read = []
    real_read = runner._read_proc

    def counting(proc: int, name: str) -> bytes | None:
        read.append(name)
        return real_read(proc, name)

    monkeypatch.setattr(runner, "_read_proc", counting)
    try:
        wait_for(lambda: len(runner.process_tree(tag)) == 2, 5, what="the shell and its sleep")
        environments = {name.split("/")[0] for name in read if name.endswith("/environ")}
        assert str(child.pid) in environments
        assert "1" not in environments  # init is older than any run
    finally:
        runner.kill_tree(child.pid, tag)
        child.wait(timeout=5)
    wait_for(lambda: not runner.process_tree(tag), 5, what="the run killed")


def test_a_walk_looks_only_at_pids_newer_than_the_run_unless_the_counter_wrapped(monkeypatch):
    """The tag also carries the last pid handed out before the run: a walk reads the stat of
    later pids only, and all of them again once the pid counter went round."""
    import subprocess

    from gateway.scripts import tree

    tag = tree.new_tag()
    floor = tree._tag_bounds(tag)[1]
    if floor is None:
        pytest.skip("this kernel does not tell the last pid (/proc/sys/kernel/ns_last_pid)")
    env = tree.tagged_environment(dict(os.environ), tag)
    child = subprocess.Popen(["sleep", "1000"], env=env, start_new_session=True)
    read: list[int] = []
    real_read = tree._read_proc

    def counting(proc: int, name: str) -> bytes | None:
        read.append(int(name.split("/")[0]))
        return real_read(proc, name)

    monkeypatch.setattr(tree, "_read_proc", counting)
    try:
        assert tree.process_tree(tag) == {child.pid}
        assert read and min(read) > floor  # nothing older than the run was opened
        read.clear()
        monkeypatch.setattr(tree, "_last_pid", lambda: floor - 1)  # the counter wrapped
        assert tree.process_tree(tag) == {child.pid}
        assert 1 in read  # the full walk: init's stat was read
    finally:
        child.kill()
        child.wait()


def test_a_walk_over_few_new_pids_opens_them_one_by_one_and_lists_nothing(monkeypatch):
    """Listing /proc costs in proportion to every process on the machine: with few pids
    handed out since the run started, the walk opens those and still finds a detached
    descendant; with many, it lists /proc as before."""
    import subprocess

    from gateway.scripts import tree

    tag = tree.new_tag()
    if tree._tag_bounds(tag)[1] is None:
        pytest.skip("this kernel does not tell the last pid (/proc/sys/kernel/ns_last_pid)")
    child = subprocess.Popen(
        ["sh", "-c", "setsid sleep 1000 & wait"],
        env=tree.tagged_environment(dict(os.environ), tag),
        start_new_session=True,
    )
    listed: list[object] = []
    real_listdir = os.listdir

    def counting(path: object = ".") -> list[str]:
        listed.append(path)
        return real_listdir(path)

    monkeypatch.setattr(tree.os, "listdir", counting)
    try:
        wait_for(lambda: len(tree.process_tree(tag)) == 2, 5, what="the shell and its sleep")
        assert listed == []
        monkeypatch.setattr(tree, "PROBE_MAX_PIDS", 0)  # too many new pids: the listing
        assert len(tree.process_tree(tag)) == 2
        assert len(listed) == 1
    finally:
        monkeypatch.undo()
        tree.kill_tree(child.pid, tag)
        child.wait(timeout=5)
    wait_for(lambda: not tree.process_tree(tag), 5, what="the run killed")


def test_a_walk_reads_nothing_of_other_runs_leaders_and_still_finds_its_tree(monkeypatch):
    """The leaders of other runs in flight are the gateway's own unreaped children: a walk
    for one run's tag does not read them (three reads each, at every run's end), and
    still finds its own leader's detached descendant, and theirs when walked for."""
    import subprocess

    from gateway.scripts import tree

    tag_a, tag_b = tree.new_tag(), tree.new_tag()
    a = subprocess.Popen(
        ["sh", "-c", "setsid sleep 1000 & wait"],
        env=tree.tagged_environment(dict(os.environ), tag_a),
        start_new_session=True,
    )
    b = subprocess.Popen(
        ["sleep", "1000"],
        env=tree.tagged_environment(dict(os.environ), tag_b),
        start_new_session=True,
    )
    tree.leaders.add(a, tag_a)
    tree.leaders.add(b, tag_b)
    read: list[str] = []
    real_read = tree._read_proc

    def reading(proc: int, name: str) -> bytes | None:
        read.append(name)
        return real_read(proc, name)

    monkeypatch.setattr(tree, "_read_proc", reading)
    try:
        wait_for(lambda: len(tree.process_tree(tag_a)) == 2, 5, what="the shell and its sleep")
        assert any(name.startswith(f"{a.pid}/") for name in read)  # its own leader is read
        assert not any(name.startswith(f"{b.pid}/") for name in read)
        assert tree.process_tree(tag_b) == {b.pid}
        b.kill()
        b.wait(timeout=5)  # reaped: its pid may be anyone's now, so it is read again
        assert b.pid not in tree.leaders.others({tag_a})
    finally:
        monkeypatch.undo()
        tree.kill_tree(a.pid, tag_a)
        a.wait(timeout=5)
        b.kill()
        b.wait(timeout=5)
        tree.leaders.discard(a)
        tree.leaders.discard(b)
    wait_for(lambda: not tree.process_tree(tag_a), 5, what="the run killed")
