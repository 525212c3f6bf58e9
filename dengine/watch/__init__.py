"""dengine.watch: exact and prefix watches.

``registry`` (pure matching) and ``dispatcher`` (the trio task delivering
committed changes to per-watcher buffers). Users get a :class:`Watch` from
``client.open_watch(...)``; see docs/watch.md."""

from dengine.watch.dispatcher import DispatcherStatistics, Watch, WatchDispatcher, WatchStatistics

__all__ = ["DispatcherStatistics", "Watch", "WatchDispatcher", "WatchStatistics"]
