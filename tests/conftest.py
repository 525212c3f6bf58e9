"""Session-wide settings for the test suite.

Disk: every ``dengine serve`` a test starts would otherwise zero-fill two
64 MiB WAL segments (the open one and the preallocated next one), about
400 MB per three-node test and some 20 GB per run. Servers started by tests
inherit ``DENGINE_STORAGE__SEGMENT_SIZE`` below (4 MiB), which keeps
preallocation on -- the code path users run -- at a sixteenth of the disk.
A test that wants the default passes its own environment or config.
"""

from __future__ import annotations

import os

#: WAL segment size for server processes the tests start (bytes).
TEST_SEGMENT_SIZE = 4 * 1024 * 1024

os.environ.setdefault("DENGINE_STORAGE__SEGMENT_SIZE", str(TEST_SEGMENT_SIZE))
