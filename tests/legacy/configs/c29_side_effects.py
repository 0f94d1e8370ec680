"""Would write MARKER if executed: translation must not run it."""
import os
from pathlib import Path
MARKER = os.environ.get("LEGACY_TEST_MARKER", "marker.txt")
Path(MARKER).write_text("executed")
learning_rate = 0.002
if __name__ == "__main__":
    os.system("touch " + MARKER)
