"""toy_lm.progress: a periodic line on a pipe while long work is silent, nothing when it is quick."""

import io
import time

from toy_lm.progress import heartbeat


def test_lines_on_a_pipe_while_silent_and_status_updates_show():
    stream = io.StringIO()
    with heartbeat("job", "compiling", interval=0.2, stream=stream, terminal=False) as beat:
        time.sleep(0.7)
        beat.update("running step 2")
        time.sleep(0.7)
    lines = stream.getvalue().splitlines()
    assert len(lines) == beat.lines >= 2
    assert all(line.startswith("[job] ") and line.endswith(" s)") for line in lines)
    assert "compiling" in lines[0] and "running step 2" in lines[-1]


def test_quick_work_prints_nothing_and_touch_postpones_the_next_line():
    stream = io.StringIO()
    with heartbeat("job", interval=5.0, stream=stream, terminal=False):
        time.sleep(0.1)
    assert stream.getvalue() == ""
    stream = io.StringIO()
    with heartbeat("job", interval=0.4, stream=stream, terminal=False) as beat:
        for _ in range(8):  # the caller writes its own line every 0.1 s
            time.sleep(0.1)
            beat.touch()
    assert stream.getvalue() == ""


def test_terminal_mode_draws_a_transient_spinner_and_writes_no_lines():
    stream = io.StringIO()
    with heartbeat("job", "compiling", interval=0.1, stream=stream, terminal=True) as beat:
        time.sleep(0.3)
    assert beat.lines == 0
