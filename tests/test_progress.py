"""Progress bars obey $TQDM_DISABLE, so a book build writes no bar widgets or stderr lines."""
from bedkd_core.progress import progress


def test_tqdm_disable_turns_bars_off(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress(range(3)).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not progress(range(3), file=open("/dev/null", "w")).disable
