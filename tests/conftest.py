import os

# Tests run on the CPU in fast mode; never reach for a hub.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("SORA_MINI_FAST", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter):
    """Print how long each notebook took in fast mode (recorded by test_notebooks.py)."""
    rows = [(r.nodeid.split("[")[-1].rstrip("]"), dict(r.user_properties)["notebook_seconds"])
            for outcome in ("passed", "failed") for r in terminalreporter.stats.get(outcome, [])
            if r.when == "call" and "notebook_seconds" in dict(r.user_properties)]
    if rows:
        terminalreporter.section("notebook times (fast mode)")
        for name, seconds in sorted(rows):
            terminalreporter.write_line(f"{name:32} {seconds:7.1f} s")
        terminalreporter.write_line(f"{'total':32} {sum(s for _, s in rows):7.1f} s")
