"""Python the jobs run with the node's python3 (3.6+, stdlib only): what the notebook's helper
(jobscript.py) and the Spark cluster's helper (sparkscript.py) share. Each helper is this text
followed by its own; neither imports anything of ours on the node."""

from __future__ import annotations

COMMON = """\
import os, sys
def alive(pid):
    try:
        os.kill(pid, 0)
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
def post_report(body, attempts):
    url = os.environ.get("BBPNB_CALLBACK_URL")
    if not url:
        return
    import json, time, urllib.request
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": "Bearer " + os.environ["BBPNB_CALLBACK_TOKEN"]})
    for attempt in range(attempts):
        try:
            urllib.request.urlopen(request, timeout=10).close()
            return
        except Exception as error:
            print("bbp-notebooks: callback failed: %s" % error, file=sys.stderr)
            time.sleep(min(2 ** attempt, 8))
"""
