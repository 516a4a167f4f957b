"""Build of the optional C extension; pyproject.toml holds every other piece of metadata.

``sipswarm._rtpcore`` is the per-packet RTP path (docs/benchmarks.md, "RTP streams in one
process"). It is optional: without a compiler the install succeeds and the pure-Python path
runs (``sipswarm.engine.media_engine.NATIVE`` is then False).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sipswarm._rtpcore",
            ["src/sipswarm/_rtpcore.c"],
            depends=["src/sipswarm/_rtpcore_poller.h"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
