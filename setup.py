"""The one thing setup.cfg cannot say: the optional C module rtc/_fastpath.c (with rtc/native/*.c).

`optional=True`: where it cannot be built (no compiler, no OpenSSL headers)
the install still succeeds and the relay runs its pure-Python packet path
(rtc/packet_path.py decides). The Makefile installs the build's Debian
packages and rebuilds the module when the C changes.
"""

import glob
import os

from setuptools import Extension, setup

_SANITIZE = os.environ.get("RR_FASTPATH_ASAN") == "1"
_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
if _SANITIZE:
    _FLAGS = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]

setup(
    ext_modules=[
        Extension(
            "rtc._fastpath",
            sources=["rtc/_fastpath.c", *sorted(glob.glob("rtc/native/*.c"))],
            depends=sorted(glob.glob("rtc/native/*.h")),
            libraries=["crypto"],
            extra_compile_args=_FLAGS,
            extra_link_args=["-fsanitize=address"] if _SANITIZE else [],
            optional=not _SANITIZE,
        )
    ]
)
