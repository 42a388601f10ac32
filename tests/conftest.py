import os

# Tests run on the CPU in fast mode; never reach for a hub.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("SORA_MINI_FAST", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
