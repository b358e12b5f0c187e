"""Deliberately wrong code that the course runs, to show why it is wrong.

Study guides and interview write-ups carry snippets that look right and are not (a "NF4" table that is
not NF4, a merge that forgets the scaling, quantization by ``searchsorted`` instead of the nearest
level). The notebooks show such a snippet in the course's own words, run it, and measure what goes
wrong. Each snippet lives here once, named for what it gets wrong, so that every notebook that shows it
runs the same code: :mod:`lorakit.pitfalls.lora` (notebooks 00-05) and
:mod:`lorakit.pitfalls.quantization` (notebooks 06-08). Nothing in lorakit itself calls them.
"""
