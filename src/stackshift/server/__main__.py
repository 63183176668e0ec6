"""``python -m stackshift.server``: the same as ``stackshift server``."""

from ..cli.server_commands import server

if __name__ == "__main__":
    server(prog_name="python -m stackshift.server")
