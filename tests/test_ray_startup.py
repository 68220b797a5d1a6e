"""Which errors of a starting local Ray are Ray's fixed startup waits running out (retried), and which are not."""

from __future__ import annotations

from sapray.raydata import startup_timed_out


def test_the_startup_timeouts_seen_on_a_busy_machine_are_retried():
    # the raylet's fixed 30 s (a busy fresh-clone run, session 5) and the GCS port file (load 60+, session 6)
    assert startup_timed_out(Exception("The current node timed out during startup. This could happen because ..."))
    assert startup_timed_out(RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_2f1a"))
    assert not startup_timed_out(ValueError("address 'ray://nowhere' is not a valid Ray address"))
    assert not startup_timed_out(RuntimeError("Maybe you called ray.init twice by accident?"))
