"""A model's SVD cache lives as long as its heads and no longer: once nothing refers to the
heads (the model is dropped), heads and cache are freed together. A registry whose value
holds its own weak key would keep every analysed model's cores for the whole process."""

from __future__ import annotations

import gc
import weakref

from svfcheck.real.heads import extract_heads
from svfcheck.real.svd_cache import svd_cache


def test_cache_is_shared_and_freed_with_its_heads(tiny_models):
    heads = extract_heads(tiny_models("llama"))
    cache = svd_cache(heads)
    assert svd_cache(heads) is cache  # one cache per heads object
    cache.core(0, [0, 1])  # fill it: it now holds tensors
    assert len(cache) > 0
    dead_heads, dead_cache = weakref.ref(heads), weakref.ref(cache)
    del heads, cache
    gc.collect()
    assert dead_heads() is None and dead_cache() is None


def test_pipeline_cache_is_shared_lean_and_freed_with_its_heads(tiny_models):
    from svfcheck.real.svd_cache import pipeline_cache

    heads = extract_heads(tiny_models("llama"))
    cache = pipeline_cache(heads)
    assert pipeline_cache(heads) is cache and cache.lean and cache is not svd_cache(heads)
    cache.core(0, [0, 1])
    assert len(cache) > 0
    dead_heads, dead_cache = weakref.ref(heads), weakref.ref(cache)
    del heads, cache
    gc.collect()
    assert dead_heads() is None and dead_cache() is None
