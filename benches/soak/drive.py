"""The soak test's clients: THREADS threads, each one client with its own session cookie,
sending a mix for DURATION seconds: hot shared URLs (hits), unique URLs (misses), its own
personal /me (must always name its own cookie), user -> orders sequences (prefetch), writes
that invalidate, and admin purges. Prints one JSON line of counts when done.
"""

import http.client
import json
import os
import random
import sys
import threading
import time

port, admin_port, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
duration = float(os.environ.get("DURATION", "600"))
threads = int(os.environ.get("THREADS", "8"))
deadline = time.monotonic() + duration

stats = {"requests": 0, "failed": 0, "leaked": 0, "purges": 0, "by_cache": {}}
lock = threading.Lock()


def note(key, n=1):
    with lock:
        stats[key] += n


def client(idx):
    rnd = random.Random(idx)
    cookie = f"session=client-{idx}-{rnd.randrange(1 << 30)}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    n, user = 0, None
    while time.monotonic() < deadline:
        n += 1
        roll = rnd.random()
        method, headers = "GET", {"cookie": cookie}
        if roll < 0.45:
            path = f"/pub/{rnd.randrange(200)}"
        elif roll < 0.60:
            path = f"/pub/unique-{idx}-{n}"
        elif roll < 0.75:
            path = "/me"
        elif roll < 0.95:
            # A user page, then that user's orders: the sequence the prefetcher learns.
            if user is None:
                user = rnd.randrange(500)
                path = f"/users/{user}"
            else:
                path, user = f"/users/{user}/orders", None
        else:
            method, path = "POST", f"/pub/{rnd.randrange(200)}"
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except Exception:
            note("failed")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        note("requests")
        cache = resp.getheader("x-cache", "?")
        with lock:
            stats["by_cache"][cache] = stats["by_cache"].get(cache, 0) + 1
        if resp.status != 200:
            note("failed")
        elif path == "/me" and json.loads(body).get("me") != cookie:
            note("leaked")


def purger():
    rnd = random.Random(1000)
    while time.monotonic() < deadline:
        time.sleep(2)
        url = f"http://127.0.0.1:{port}/pub/{rnd.randrange(200)}"
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
        try:
            conn.request("POST", "/purge?url=" + url, headers={"authorization": f"Bearer {token}"})
            if conn.getresponse().status == 200:
                note("purges")
        except Exception:
            pass
        conn.close()


workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
workers.append(threading.Thread(target=purger))
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(stats, sort_keys=True))
