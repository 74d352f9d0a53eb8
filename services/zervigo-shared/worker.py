"""Zervigo shared services: background jobs behind zervigo-auth's API."""
import os
import sys
import time
import urllib.request

AUTH_URL = os.environ.get("AUTH_URL", "http://127.0.0.1:8207")
HEARTBEAT = "/tmp/zervigo-shared.heartbeat"


def auth_is_up() -> bool:
    try:
        with urllib.request.urlopen(AUTH_URL + "/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def check() -> int:
    """Health: the worker wrote its heartbeat within the last minute."""
    try:
        return 0 if time.time() - os.path.getmtime(HEARTBEAT) < 60 else 1
    except OSError:
        return 1


def main() -> None:
    while True:
        if auth_is_up():
            # Token cleanup and queued mail would run here.
            with open(HEARTBEAT, "w") as f:
                f.write(str(int(time.time())))
        time.sleep(10)


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(check())
    main()
