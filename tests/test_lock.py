"""One daemon per state folder and per inbox."""

import os
import time

import pytest

from nstd import config
from nstd.cli import main
from nstd.daemon.lock import CLAIM_NAME, InboxClaim, StateLock
from nstd.daemon.service import Service
from nstd.errors import ConfigError

from harness.daemon import write_config


def test_a_second_daemon_on_the_same_config_is_refused_naming_the_first(service, capsys):
    second = Service(service.cfg)
    with pytest.raises(ConfigError, match=f"another nstd \\(pid {os.getpid()} on .*\\) is running on"):
        second.prepare()
    assert main(["check", "--config", str(service.cfg.path)]) == 0
    assert f"daemon: running on this state_dir (pid {os.getpid()}" in capsys.readouterr().out


def test_another_state_folder_on_the_same_inbox_is_refused_and_check_says_so(service, tmp_path, capsys):
    other = write_config(tmp_path, service.cfg.models_dir, styles={"ink": {"image": "style.png"}},
                         state_dir="state-two")
    (tmp_path / "state-two").mkdir()
    cfg = config.load(other)
    with pytest.raises(ConfigError, match="^inbox: another nstd \\(pid .* state_dir .*/state\\) watches"):
        Service(cfg).prepare()
    assert main(["check", "--config", str(other)]) == 1
    assert "FAIL  inbox: another nstd" in capsys.readouterr().out


def test_a_claim_left_by_a_dead_or_silent_daemon_does_not_block(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = InboxClaim(inbox, tmp_path / "a")
    first.refresh()
    second = InboxClaim(inbox, tmp_path / "b")
    now = time.time()
    assert second.other(now) is not None  # fresh, and this process is alive
    assert second.other(now + 1000) is None  # not refreshed for long: its daemon is gone
    (inbox / CLAIM_NAME).write_text('{"host": "%s", "pid": 999999999, "state_dir": "x"}' % os.uname().nodename)
    assert second.other(now) is None  # same host, and that pid is not running


def test_the_lock_goes_when_the_daemon_closes(tmp_path):
    lock = StateLock(tmp_path)
    lock.acquire()
    assert StateLock(tmp_path).holder().startswith(f"pid {os.getpid()}")
    lock.release()
    assert StateLock(tmp_path).holder() is None
