"""The setting bake and merge run their module loops in (``bulk_mode``): torch single-threaded, the cyclic
garbage collector paused, both restored after.

Example:
    >>> with bulk_mode():
    ...     torch.get_num_threads(), gc.isenabled()
    (1, False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def bulk_mode(*, single_thread: bool = True) -> Iterator[None]:
    """For a while (both restored after): torch single-threaded (unless ``single_thread`` is False), and Python's
    cyclic garbage collector paused.

    Bake and merge do thousands of small, memory-bound tensor ops while hashing threads keep the other cores
    busy: torch's intra-op threads then wait on each other (seconds lost on a busy 2-core machine). They also
    create tens of thousands of objects that live until the file is written, which trigger full collections
    over every object of the process (about 0.1 s per merge) and free nothing; cyclic garbage made meanwhile is
    collected once the collector is back on. Elementwise results do not depend on either; SVD and QR results do
    depend on the thread count (LAPACK blocking), so compression keeps the caller's threads.

    Example:
        >>> with bulk_mode():
        ...     torch.get_num_threads(), gc.isenabled()
        (1, False)
    """
    import gc

    import torch

    threads = torch.get_num_threads()
    collecting = gc.isenabled()
    if single_thread:
        torch.set_num_threads(1)
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
        torch.set_num_threads(threads)
