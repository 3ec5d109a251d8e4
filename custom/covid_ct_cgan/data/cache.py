"""Dataset caching that is never silent.

MONAI's ``CacheDataset`` runs every deterministic transform over the whole
datalist when it is built, before the first iteration: minutes on a real
dataset (1,394 slices read, resampled and conditioned), and, with
``progress: false`` (its tqdm bar writes carriage-return runs into a log
file), without a word. :class:`ProgressCacheDataset` reports it with
:func:`covid_ct_cgan.logs.progress`: a bar on a terminal, a line every
``every_s`` seconds in a log file, and one at the end.
"""

from __future__ import annotations

from multiprocessing.pool import ThreadPool
from typing import Any

from monai.data import CacheDataset

from ..logs import progress

CACHE_PROGRESS_EVERY_S = 10.0


class ProgressCacheDataset(CacheDataset):
    """``CacheDataset`` whose cache fill shows progress (see the module docstring).

    Args:
        args: as ``CacheDataset``.
        desc: what is cached, shown with the progress (e.g. ``"caching training slices"``).
        every_s: least seconds between two progress lines when not on a terminal.
        kwargs: as ``CacheDataset`` (its ``progress`` bar is not used).
    """

    def __init__(self, *args: Any, desc: str = "caching", every_s: float = CACHE_PROGRESS_EVERY_S, **kwargs: Any) -> None:
        self.desc, self.every_s = desc, float(every_s)  # set first: CacheDataset fills its cache in __init__
        super().__init__(*args, **kwargs)

    def _fill_cache(self, indices: list[int] | None = None) -> list:
        if self.cache_num <= 0:
            return []
        if indices is None:
            indices = list(range(self.cache_num))
        with ThreadPool(self.num_workers) as pool:
            items = progress(pool.imap(self._load_cache_item, indices), desc=self.desc, total=len(indices),
                             unit="slice", every_s=self.every_s, leave=False) if indices else []
            return list(items)
