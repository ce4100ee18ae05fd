"""Both CLIs' output outside a terminal: plain progress lines for `--wait` in a pipe, a closed pipe ends quietly."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import shutil
import subprocess
import struct
import sys
import termios
from pathlib import Path

import pytest

from analysis.cli_common import CLOSED_PIPE_STATUS
from tests.helpers import kill_job_processes
from training.cli_common import PlainProgress, progress_bar

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "max_train_rows=32", "--set", "max_eval_rows=8", "--set", "max_test_rows=8", "--set",
         "eval_every=0"]
# "job 1 running: 3/20 steps (15%), loss 0.6931 [4 s]": what a CI log gets instead of a redrawn bar.
PLAIN = re.compile(r"^(?P<what>.+): (?P<n>\d+)(?:/(?P<total>\d+))? steps(?: \(\d+%\))?(?:, .+)? \[(?P<s>\d+) s\]$")


@pytest.fixture
def data(tmp_path):
    """A fresh data folder for the CLI processes; every job worker they started is killed afterwards."""
    from training.jobs import JobStore

    yield tmp_path
    kill_job_processes(JobStore(tmp_path))


def env_for(data: Path) -> dict:
    return dict(os.environ, SPECTRASCOPE_DATA=str(data), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
                OMP_NUM_THREADS="1", SPECTRASCOPE_MAX_JOBS="1")


def progress_lines(stderr: str, what: str) -> list[re.Match]:
    """The plain progress lines of stderr whose subject starts with `what` (e.g. "job 1", "study 1")."""
    return [m for m in map(PLAIN.match, stderr.splitlines()) if m and m["what"].startswith(what)]


def assert_plain_and_spaced(lines: list[re.Match], stderr: str) -> None:
    """No carriage return anywhere (no redrawn bar); the lines before the last are at least ~5 s apart."""
    assert "\r" not in stderr and "\x1b[" not in stderr, repr(stderr[-2000:])
    assert lines, stderr
    seconds = [int(m["s"]) for m in lines[:-1]]
    assert all(b - a >= 4 for a, b in zip(seconds, seconds[1:])), seconds     # 5 s, each rounded to whole s
    assert len({m.group(0).rsplit(" [", 1)[0] for m in lines}) == len(lines)   # an unchanged state is not repeated


# ------------------------------------------------------------------------------------------ --wait in a pipe

@pytest.mark.slow
def test_submit_wait_in_a_pipe_prints_plain_lines_ending_with_the_final_state(data, tiny_bert):
    proc = subprocess.run([sys.executable, "-m", "training", "submit", "--method", "lora", "--model", tiny_bert,
                           "--max-steps", "40", *SMALL, "--name", "piped", "--wait"], cwd=ROOT, env=env_for(data),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[0].startswith("job 1 (piped) ")
    lines = progress_lines(proc.stderr, "job 1")
    assert_plain_and_spaced(lines, proc.stderr)
    last = lines[-1]
    assert last["what"] == "job 1 done" and last["n"] == last["total"] == "40", last.group(0)
    assert "loss " in last.group(0)
    assert len(lines) <= 2 + int(last["s"]) // 4                 # one line per few seconds, not one per step
    assert '"status": "done"' in proc.stdout


@pytest.mark.slow
def test_study_wait_in_a_pipe_prints_plain_lines(data, tiny_bert):
    proc = subprocess.run([sys.executable, "-m", "training", "study", "--model", tiny_bert, "--methods", "lora",
                           "--seeds", "1", "--max-steps", "5", "--no-base", *SMALL, "--wait"], cwd=ROOT,
                          env=env_for(data), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = progress_lines(proc.stderr, "study 1:")
    assert_plain_and_spaced(lines, proc.stderr)
    last = lines[-1]
    assert last["what"] == "study 1: 1 done / 1 planned" and last["n"] == last["total"] == "5", last.group(0)
    assert "| LoRA |" in proc.stdout                              # the table still ends the output


def test_a_terminal_still_gets_the_redrawn_bar():
    """stderr on a pseudo-terminal: tqdm redraws one line with '\\r' (the plain lines are only for pipes)."""
    code = ("from training.cli_common import progress_bar\n"
            "with progress_bar('job 9', 'stopped') as bar:\n"
            "    bar.total = 3\n"
            "    for i in range(1, 4):\n"
            "        bar.n = i; bar.set_description('job 9 running'); bar.refresh()\n")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))     # 24 rows × 100 columns
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stderr=follower, stdout=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
        os.close(follower)
        follower = None
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:                                 # EIO: the terminal's other end is closed, all read
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower is not None:
            os.close(follower)
    assert proc.returncode == 0
    text = out.decode(errors="replace")
    assert re.search(r"\r(?!\n)", text), repr(text)          # a bare '\r' (the terminal turns '\n' into '\r\n')
    assert "3/3" in text and not PLAIN.match(text.strip().splitlines()[-1]), repr(text)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_a_changed_state_at_most_every_five_seconds():
    out, clock = io.StringIO(), FakeClock()
    bar = PlainProgress("job 4", out, every=5.0, clock=clock)
    bar.total = 100
    for step in range(1, 41):                     # a step and a refresh every 0.5 s for 20 s
        clock.now += 0.5
        bar.n = step
        bar.set_postfix({"loss": f"{1 / step:.4f}"})
        bar.set_description("job 4 running")
        bar.refresh()
    printed = out.getvalue().splitlines()
    assert printed == ["job 4 running: 1/100 steps (1%), loss 1.0000 [0 s]",       # 100.5 - 100 rounds to 0
                       "job 4 running: 11/100 steps (11%), loss 0.0909 [6 s]",     # 5.5 s, half to even: 6
                       "job 4 running: 21/100 steps (21%), loss 0.0476 [10 s]",
                       "job 4 running: 31/100 steps (31%), loss 0.0323 [16 s]"]
    clock.now += 60
    bar.refresh()                                 # the last state, held back by the 5 s, comes with the next call
    assert out.getvalue().splitlines()[-1] == "job 4 running: 40/100 steps (40%), loss 0.0250 [80 s]"
    clock.now += 60
    bar.refresh()                                 # the same state a minute later: nothing new to say
    assert len(out.getvalue().splitlines()) == 5
    bar.set_description("job 4 done")
    clock.now += 0.1
    bar.close()                                   # the final state, however soon after the last line
    assert out.getvalue().splitlines()[-1] == "job 4 done: 40/100 steps (40%), loss 0.0250 [140 s]"


def test_progress_bar_picks_plain_lines_for_a_file_and_ctrl_c_is_one_message():
    from analysis.types import SpectrascopeError

    out = io.StringIO()
    with pytest.raises(SpectrascopeError, match="stopped waiting"):
        with progress_bar("job 5", "stopped waiting; job 5 goes on", out) as bar:
            assert isinstance(bar, PlainProgress)
            bar.n = 2
            raise KeyboardInterrupt
    assert out.getvalue() == "job 5: 2 steps [0 s]\n"


# ------------------------------------------------------------------------------------------ a closed pipe

@pytest.mark.parametrize("argv", [["training", "list", "--json"], ["training", "list"], ["training", "study-list"],
                                  ["training", "--help"], ["analysis", "allocate", "--scores", "2.1,2.5,3.0"],
                                  ["analysis", "--help"]], ids=" ".join)
def test_a_reader_that_closed_the_pipe_ends_the_command_quietly(tmp_path, argv):
    """The read end is closed before the command writes anything: every write of it meets a closed pipe."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=env_for(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(120)
    assert stderr == ""                                            # no traceback, no "Exception ignored"
    assert code in (0, CLOSED_PIPE_STATUS), code                   # argparse's --help swallows the error itself


@pytest.mark.skipif(shutil.which("head") is None, reason="needs the head command")
def test_output_piped_into_head_ends_quietly_with_the_pipe_status(tmp_path):
    """`python -m analysis allocate … | head -c 40`: 460 kB of JSON, head leaves after 40 bytes."""
    scores = ",".join(["2.5"] * 20000)
    writer = subprocess.Popen([sys.executable, "-m", "analysis", "allocate", "--scores", scores], cwd=ROOT,
                              env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-c", "40"], stdin=writer.stdout, stdout=subprocess.PIPE)
    writer.stdout.close()                                          # only head reads the pipe now
    first = head.communicate(timeout=120)[0]
    stderr = writer.stderr.read().decode()
    writer.stderr.close()
    assert writer.wait(120) == CLOSED_PIPE_STATUS and stderr == ""
    assert first.startswith(b"{") and len(first) == 40
