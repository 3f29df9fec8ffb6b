"""Model weights: a catalogue of where each comes from, a cache, fetching with checksums, one resolver.

* :mod:`.catalogue`: the entries (name, URL or Hub id, checksum, licence, file name, users);
* :mod:`.cache`: where fetched files live (``$DOLOS_BENCH_CACHE`` / XDG) and checksum stamps;
* :mod:`.fetch`: ``bench weights fetch`` (pooch for URLs, huggingface_hub for Hub ids);
* :mod:`.resolve`: what every stage's ``weights``/``model`` parameter goes through, and the
  build's check before any sample (:func:`check_stage_weights`).

Nothing here imports torch or diffusers: the core and ``bench ls`` stay light.
"""

from .cache import CACHE_ENV, cache_dir
from .catalogue import CATALOGUE_ENV, CatalogueError, Entry, catalogue, find_entry, require_entry
from .fetch import FetchError, Fetched, fetch, fetch_hub
from .resolve import Resolved, WeightNeed, WeightsError, check_stage_weights, resolve_weights, stage_weights

__all__ = [
    "CACHE_ENV", "CATALOGUE_ENV", "CatalogueError", "Entry", "FetchError", "Fetched", "Resolved", "WeightNeed",
    "WeightsError", "cache_dir", "catalogue", "check_stage_weights", "fetch", "fetch_hub", "find_entry",
    "require_entry", "resolve_weights", "stage_weights",
]
