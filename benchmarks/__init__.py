"""Benchmarks of mistral_nbenv against its references (``python -m benchmarks.run``).

Every figure is the median of repeated runs, measured in the same run as its reference
(interleaved where both can run in turn) and reported as a ratio to it.  All traffic goes
to loopback servers (:class:`mistral_nbenv.testing.MistralTestServer`) with fake keys.
"""
