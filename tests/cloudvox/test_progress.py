"""Progress lines for batch logs (cloudvox/progress.py)."""
import logging

from cloudvox.progress import Progress


def test_lines_at_the_interval_off_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="cloudvox.progress")
    bar = Progress(100, "featurize", unit="blocks", every_s=0.0, terminal=False)
    bar.update(10, failures=2)
    assert not caplog.records  # every_s 0: no lines
    bar = Progress(100, "featurize", unit="blocks", every_s=1e-9, terminal=False)
    bar.update(25, failures=3)
    text = caplog.records[-1].getMessage()
    assert text.startswith("featurize: 25/100 blocks (25.0%), ") and "blocks/s, ETA " in text
    assert text.endswith("failures 3")


def test_a_resumed_count_starts_where_it_was_and_disabled_is_silent(caplog):
    caplog.set_level(logging.INFO, logger="cloudvox.progress")
    bar = Progress(10, "epoch 3", unit="steps", initial=4, every_s=1e-9, terminal=False)
    bar.set(6)
    assert "epoch 3: 6/10 steps" in caplog.records[-1].getMessage()
    assert "failures" not in caplog.records[-1].getMessage()  # nothing counted: not shown
    quiet = Progress(10, "x", every_s=1e-9, enabled=False, terminal=False)
    quiet.update(5)
    assert quiet.n == 0 and len(caplog.records) == 1
