"""Print nginx.conf with each ${NAME} replaced by the environment variable NAME (${NAME:-x}: x
when NAME is not set). nginx reads no environment variables, and its `listen` and `server` lines
take none of its own, so the Procfile runs this to put the ports of this run into the file."""

import os
import re
import sys
from pathlib import Path


def value(match):
    name, default = match[1], match[2]
    if name not in os.environ and default is None:
        sys.exit(f"nginx.conf needs the environment variable {name}.")
    return os.environ.get(name, default)


template = (Path(__file__).parent / "nginx.conf").read_text()
sys.stdout.write(re.sub(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}", value, template))
